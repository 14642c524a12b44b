//! Commands: takes parsed arguments; calls the library; prints human or `--json` output.
//! Holds no storage or format logic of its own.

mod dr;
mod ops;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::app::record::{self, AppBackupError, RestorePlanOptions};
use crate::app::volumes::{self, ConsistencyOptions};
use crate::format::BackupFilters;
use crate::format::KdfParams;
use crate::k8s::live::LiveCluster;
use crate::k8s::objects::{Mapping, ResourceError, SanitiseOptions};
use crate::k8s::source::{
    self as kcluster, ClusterDir, ClusterError, ExistingPolicy, Outcome, ResourceFilter, Selector,
};
use crate::k8s::LiveError;
use crate::repository::{rfc3339, CheckOptions, InitOptions, RepoError, Repository};
use crate::store::{self, StoreError, StoreOptions};
use crate::volume::backup::{backup_volume, BackupError, BackupOptions};
use crate::volume::restore::{restore_volume, RestoreError, RestoreOptions};

const ABOUT: &str =
    "Disaster recovery for Kubernetes applications: encrypted, deduplicated, incremental \
backups of volumes to a local directory or an S3 bucket.";

const AFTER: &str = "Environment: LIFEBOAT_REPOSITORY (--repo), LIFEBOAT_PASSWORD (or --password-file), \
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for S3-compatible \
servers (MinIO, Garage, Ceph). Exit codes: 0 success, 1 failure, 2 bad usage, 3 transient failure (retry later), \
4 repository damage found.";

#[derive(Debug, Parser)]
#[command(name = "lifeboat", version, about = ABOUT, after_help = AFTER)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct Global {
    /// Repository: a path, file://PATH, or s3://BUCKET/PREFIX.
    #[arg(long, global = true, env = "LIFEBOAT_REPOSITORY", value_name = "URL")]
    pub repo: Option<String>,
    /// Read the password from this file (else LIFEBOAT_PASSWORD).
    #[arg(long, global = true, value_name = "FILE")]
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, check and manage the keys of a repository.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Back up and restore block volumes (image files or block devices).
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// List snapshots, oldest first.
    Snapshots,
    /// Application backups: a namespace's objects (and the cluster-scoped objects it needs).
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Restore an application backup: sanitised, mapped and in dependency order.
    Restore {
        #[command(subcommand)]
        command: RestoreCommand,
    },
    /// Run scheduled backups (SchedulePolicy and BackupSchedule objects), apply their
    /// retention, serve metrics. SIGTERM stops it (a running backup is cancelled, its post rules
    /// still run); SIGHUP reloads the configuration.
    Server(ops::ServerArgs),
    /// The schedules the server runs.
    Schedule {
        #[command(subcommand)]
        command: ops::ScheduleCommand,
    },
    /// Runs of schedules, oldest first.
    Runs {
        #[arg(long, value_name = "NAME")]
        schedule: Option<String>,
        /// The newest N runs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The local catalog.
    Catalog {
        #[command(subcommand)]
        command: ops::CatalogCommand,
    },
    /// Remove application backups by retention rules (per schedule); never the newest complete
    /// backup of a schedule. `prune` then gives the space back.
    Forget(ops::ForgetArgs),
    /// Remove the data nothing references any more (repacking packs that are mostly garbage);
    /// new data is written before old data is deleted.
    Prune {
        #[arg(long)]
        dry_run: bool,
        /// Repack a pack when at least this fraction of it is garbage.
        #[arg(long, default_value_t = 0.5, value_name = "FRACTION")]
        repack_threshold: f64,
    },
    /// On the DR site: keep namespaces a warm standby of a schedule's newest backup
    /// (volumes updated by block-map difference, workloads held at 0 replicas); or, with
    /// `status`, show what each namespace holds and how old it is.
    Standby(dr::StandbyArgs),
    /// Failover: stop standby applying to a namespace and start its applications (recorded
    /// replica counts back, CronJobs resumed). Idempotent.
    Activate(dr::NamespaceArgs),
    /// The reverse of activate: applications at 0 replicas (counts recorded), CronJobs
    /// suspended; standby applies to the namespace again.
    Deactivate(dr::NamespaceArgs),
    /// A non-disruptive DR test: restore the newest backup into a scratch namespace, verify
    /// every volume and object, report the time to ready.
    Drill(dr::DrillArgs),
    /// Run the whole flow on generated data in a scratch directory: init, full and incremental
    /// backup, restore, verify, check. Needs no cluster and no cloud account.
    Demo {
        /// Scratch directory (must not exist or be empty) [default: a new directory under /tmp].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of the generated volume in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
    },
    /// Generate or change demo volume data (for the benchmark and scripts).
    #[command(hide = true)]
    DemoData {
        #[command(subcommand)]
        command: DemoDataCommand,
    },
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum BackupCommand {
    /// Back up one or more namespaces: their objects and the data of their
    /// PersistentVolumeClaims, the volumes copied together while the pre rules hold the
    /// application quiet.
    Create {
        /// Backup name (unique in the repository).
        name: String,
        /// Namespace to capture (repeatable).
        #[arg(long = "namespace", short = 'n', required = true)]
        namespaces: Vec<String>,
        /// Label selector for namespaced objects: k=v, k!=v, k, !k, comma-separated.
        #[arg(long, default_value = "")]
        selector: String,
        /// Only these objects: kind/name or kind/namespace/name, comma-separated.
        #[arg(long, default_value = "")]
        include_resources: String,
        /// Leave out these kinds, comma-separated.
        #[arg(long, default_value = "")]
        exclude_resource_types: String,
        /// Capture from a cluster directory (DIR/resources/ holds exported objects).
        #[arg(long, value_name = "DIR")]
        cluster_dir: Option<PathBuf>,
        /// Capture from a live cluster through this kubeconfig context [default: the current
        /// context, or the in-cluster configuration].
        #[arg(long, value_name = "CTX", conflicts_with = "cluster_dir")]
        context: Option<String>,
        /// Rule file (kind: Rule) whose actions run before the volumes are snapshotted
        /// (repeatable).
        #[arg(long = "pre-rule", value_name = "FILE")]
        pre_rules: Vec<PathBuf>,
        /// Rule file whose actions run after the snapshot, and always once pre rules started
        /// (repeatable).
        #[arg(long = "post-rule", value_name = "FILE")]
        post_rules: Vec<PathBuf>,
        /// Back up the data of every PersistentVolumeClaim in scope.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        include_volumes: bool,
        /// Record the backup as one of this BackupSchedule's (an extra run): its retention
        /// and the DR sites that follow it take it into account.
        #[arg(long, value_name = "NAME")]
        schedule: Option<String>,
        /// VolumeSnapshotClass for live clusters [default: the driver's default class].
        #[arg(long, value_name = "CLASS")]
        snapshot_class: Option<String>,
        /// One CSI VolumeGroupSnapshot per namespace: `auto` uses the claims' driver's
        /// default VolumeGroupSnapshotClass when it has one, `none` takes VolumeSnapshots
        /// back to back, anything else names the class.
        #[arg(long, value_name = "CLASS|auto|none", default_value = "auto")]
        group_snapshot_class: crate::k8s::csi::GroupSnapshots,
        #[command(flatten)]
        movers: MoverArgs,
    },
    /// List application backups, oldest first.
    List,
    /// Show what one backup holds.
    Describe { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// Restore a backup to a directory of YAML (apply order), into a cluster directory, or
    /// print the plan (--dry-run).
    Create {
        #[arg(long, value_name = "NAME")]
        from_backup: String,
        /// old:new namespace renames, comma-separated.
        #[arg(long, default_value = "")]
        namespace_mapping: String,
        /// old:new storage class renames, comma-separated.
        #[arg(long, default_value = "")]
        storage_class_mapping: String,
        /// Only these objects: kind/name or kind/namespace/name, comma-separated.
        #[arg(long, default_value = "")]
        include_resources: String,
        /// Label selector for namespaced objects.
        #[arg(long, default_value = "")]
        selector: String,
        /// false: workloads at 0 replicas (original count recorded), CronJobs suspended.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        start_applications: bool,
        /// What to do with objects that exist on the target.
        #[arg(long, value_enum, default_value_t = ExistingPolicy::Skip)]
        existing_resource_policy: ExistingPolicy,
        /// Keep the objects' status.
        #[arg(long)]
        keep_status: bool,
        /// Keep Service node ports.
        #[arg(long)]
        keep_node_ports: bool,
        /// Print the ordered plan and conflicts; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write YAML files whose lexical order is the apply order (for kubectl apply -f).
        #[arg(long, value_name = "DIR", conflicts_with = "cluster_dir")]
        output_dir: Option<PathBuf>,
        /// Apply into a cluster directory.
        #[arg(long, value_name = "DIR", conflicts_with = "context")]
        cluster_dir: Option<PathBuf>,
        /// Apply to a live cluster through this kubeconfig context (server-side apply).
        #[arg(long, value_name = "CTX", conflicts_with = "output_dir")]
        context: Option<String>,
        #[command(flatten)]
        movers: MoverArgs,
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
            if let Ok(pw) = String::from_utf8(pw) {
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
            ..Default::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DemoDataCommand {
    /// Write a sparse image of mixed content (holes, duplicates, text-like, random).
    Generate {
        out: PathBuf,
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Overwrite a fraction of an image with random data in aligned extents; write the
    /// changed ranges as a --changed-ranges file.
    Mutate {
        image: PathBuf,
        #[arg(long, default_value_t = 0.01)]
        fraction: f64,
        #[arg(long, default_value_t = 64)]
        extent_kib: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        ranges_out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a new repository at --repo (refused where one exists or other objects are).
    Init {
        /// Block size of volume snapshots in KiB (power of two, 64..=8192). Fixed for the repository.
        #[arg(long, default_value_t = 512)]
        chunk_size_kib: u32,
        /// Target size of pack objects in MiB.
        #[arg(long, default_value_t = 16)]
        pack_size_mib: u32,
        /// zstd level (0 = none).
        #[arg(long, default_value_t = 1)]
        compression: i32,
        /// Weak key derivation, for tests only.
        #[arg(long, hide = true)]
        insecure_fast_kdf: bool,
    },
    /// Verify the repository; exit 4 and name each broken object on any damage.
    Check {
        /// Also download every pack and verify every blob.
        #[arg(long)]
        read_data: bool,
    },
    /// Passwords: each key object wraps the same master key, so no data is re-encrypted.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a password (read from --new-password-file or LIFEBOAT_NEW_PASSWORD).
    Add {
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[arg(long, hide = true)]
        insecure_fast_kdf: bool,
    },
    /// Remove a password's key by id (or unique prefix); the last key cannot be removed.
    Remove { id: String },
    /// List keys.
    List,
}

/// Changed blocks from the CSI SnapshotMetadata service, for `volume backup` in a mover Job
/// (the Job is given these by lifeboat; anything that fails falls back to comparing hashes).
#[derive(Debug, Clone, Args)]
pub struct CsiDeltaArgs {
    /// SnapshotMetadata service address (host:port).
    #[arg(long, value_name = "HOST:PORT", hide = true, conflicts_with_all = ["changed_ranges", "full"],
          requires_all = ["csi_delta_ca", "csi_delta_token_file", "csi_delta_namespace", "csi_delta_base", "csi_delta_target", "csi_delta_parent"])]
    csi_delta_address: Option<String>,
    /// Its CA bundle: PEM, or PEM in base64 as a SnapshotMetadataService's `spec.caCert`.
    #[arg(
        long,
        env = "LIFEBOAT_CSI_DELTA_CA",
        hide = true,
        hide_env_values = true
    )]
    csi_delta_ca: Option<String>,
    /// File holding a ServiceAccount token for the service's audience.
    #[arg(long, value_name = "FILE", hide = true)]
    csi_delta_token_file: Option<PathBuf>,
    /// Namespace of the two VolumeSnapshots.
    #[arg(long, hide = true)]
    csi_delta_namespace: Option<String>,
    /// The base snapshot (its CSI snapshot handle, or name for a v1alpha1 service).
    #[arg(long, hide = true)]
    csi_delta_base: Option<String>,
    /// The VolumeSnapshot being read.
    #[arg(long, hide = true)]
    csi_delta_target: Option<String>,
    /// The source label of the repository snapshot that was read from the base: the
    /// ranges are used only when NAME's newest snapshot carries it.
    #[arg(long, hide = true)]
    csi_delta_parent: Option<String>,
}

impl CsiDeltaArgs {
    /// Asks the service for the ranges when the parent is the base's snapshot; None (and a
    /// warning) whenever that cannot be done, so that the backup compares hashes.
    async fn ranges(
        &self,
        repo: &crate::repository::Repository,
        name: &str,
        cancel: &CancellationToken,
    ) -> Option<crate::volume::backup::GivenRanges> {
        let address = self.csi_delta_address.as_ref()?;
        let (Some(ca), Some(token_file), Some(ns), Some(base), Some(target), Some(parent)) = (
            &self.csi_delta_ca,
            &self.csi_delta_token_file,
            &self.csi_delta_namespace,
            &self.csi_delta_base,
            &self.csi_delta_target,
            &self.csi_delta_parent,
        ) else {
            return None;
        };
        match repo.latest_of(name).await {
            Ok(Some((_, p))) if &p.source == parent => {}
            Ok(found) => {
                tracing::warn!(
                    volume = name,
                    newest = found.map(|(_, p)| p.source).unwrap_or_default(),
                    expected = parent.as_str(),
                    "the newest snapshot was not read from the base VolumeSnapshot: comparing hashes instead of asking for changed blocks"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(volume = name, "{e}: comparing hashes instead");
                return None;
            }
        }
        use base64::Engine;
        let ca_pem = match base64::engine::general_purpose::STANDARD.decode(ca.trim()) {
            Ok(pem) => pem,
            Err(_) => ca.as_bytes().to_vec(),
        };
        let token = match std::fs::read_to_string(token_file) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                tracing::warn!(
                    "cannot read the ServiceAccount token {}: {e}; comparing hashes instead",
                    token_file.display()
                );
                return None;
            }
        };
        let ep = crate::volume::cbt::Endpoint {
            address: address.clone(),
            ca_pem,
            token,
        };
        let q = crate::volume::cbt::DeltaQuery {
            namespace: ns.clone(),
            base: base.clone(),
            target: target.clone(),
        };
        match crate::volume::cbt::delta(&ep, &q, cancel, std::time::Duration::from_secs(600)).await
        {
            Ok(d) => {
                tracing::info!(
                    volume = name,
                    ranges = d.ranges.len(),
                    changed_bytes = d.changed_bytes(),
                    "changed blocks from the CSI SnapshotMetadata service"
                );
                Some(crate::volume::backup::GivenRanges {
                    source: format!("the SnapshotMetadata delta {base} → {ns}/{target}"),
                    capacity: d.capacity,
                    ranges: d.ranges,
                })
            }
            Err(e) => {
                tracing::warn!(volume = name, "{e}: comparing hashes instead");
                None
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Back up an image file or block device as snapshot of volume NAME, incrementally
    /// against NAME's newest snapshot.
    Backup {
        /// Volume name (incrementals chain by name).
        #[arg(long)]
        name: String,
        /// Image file or block device.
        source: PathBuf,
        /// JSON array of {"offset": N, "length": N} byte extents changed since the newest
        /// snapshot of NAME: only those are read.
        #[arg(long, value_name = "FILE")]
        changed_ranges: Option<PathBuf>,
        /// Read and hash every block instead of comparing with the parent.
        #[arg(long, conflicts_with = "changed_ranges")]
        full: bool,
        /// What the snapshot records as its source instead of the path (the mover Jobs
        /// name the claim and snapshot they read).
        #[arg(long, hide = true)]
        label: Option<String>,
        #[command(flatten)]
        csi_delta: Box<CsiDeltaArgs>,
    },
    /// Restore a snapshot (id, unique id prefix, or NAME:latest) to a new file, or with
    /// --overwrite onto an existing file or block device.
    Restore {
        snapshot: String,
        target: PathBuf,
        /// Update an existing target in place (e.g. an older copy, or a block device): only
        /// blocks that differ are written.
        #[arg(long)]
        overwrite: bool,
        /// Ranged reads in flight.
        #[arg(long, default_value_t = 4)]
        downloads: usize,
    },
    /// Check an image file or block device against a snapshot, block by block (keyed hashes
    /// and zeros as the block map says); exit 4 on a difference.
    Verify {
        snapshot: String,
        target: PathBuf,
        /// Write the result as JSON here and exit 0 whatever it says (the drill's Jobs: their
        /// termination message, which the drill reads).
        #[arg(long, value_name = "FILE", hide = true)]
        report_file: Option<PathBuf>,
    },
}

/// `volume verify`'s result.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub snapshot: String,
    pub verified: bool,
    pub blocks_verified: u64,
    pub blocks_total: u64,
}

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no repository given: pass --repo URL or set LIFEBOAT_REPOSITORY")]
    NoRepository,
    #[error("no password given: set LIFEBOAT_PASSWORD or pass --password-file FILE")]
    NoPassword,
    #[error("no new password given: set LIFEBOAT_NEW_PASSWORD or pass --new-password-file FILE")]
    NoNewPassword,
    #[error("cannot read password file {path}: {source}")]
    PasswordFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the repository check found {0} problem(s); see the list above")]
    CheckFailed(usize),
    #[error("{target} is not snapshot {snapshot}: it differs at block {block} (or in size)")]
    VolumeDiffers {
        target: String,
        snapshot: String,
        block: u64,
    },
    #[error("demo: {0}")]
    Demo(String),
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
    #[error("{0}")]
    Server(String),
    #[error(transparent)]
    Scheduler(#[from] crate::scheduler::ServerError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Standby(#[from] crate::standby::StandbyError),
    #[error("restore create needs a target: --output-dir DIR, --cluster-dir DIR, --context CTX, or --dry-run")]
    NoRestoreTarget,
    #[error("the backup was recorded, partially failed: {0} part(s) of the scope could not be captured (listed above); fix access and back up again")]
    PartialBackup(usize),
    #[error("{0} object(s) failed to restore; see the results above")]
    ObjectsFailed(usize),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        let retryable = match self {
            Error::Store(e) => e.is_retryable(),
            Error::Repo(e) => e.is_retryable(),
            Error::Backup(e) => e.is_retryable(),
            Error::Restore(e) => e.is_retryable(),
            Error::App(e) => e.is_retryable(),
            Error::Live(e) => e.is_retryable(),
            Error::Standby(e) => e.is_retryable(),
            _ => false,
        };
        match self {
            Error::CheckFailed(_) | Error::VolumeDiffers { .. } => 4,
            Error::Usage(_) => 2,
            _ if retryable => 3,
            _ => 1,
        }
    }
}

fn read_secret(file: Option<&Path>, env: &str) -> Result<Option<Vec<u8>>, Error> {
    if let Some(p) = file {
        let s = std::fs::read(p).map_err(|source| Error::PasswordFile {
            path: p.display().to_string(),
            source,
        })?;
        let trimmed = s.strip_suffix(b"\n").unwrap_or(&s);
        return Ok(Some(
            trimmed.strip_suffix(b"\r").unwrap_or(trimmed).to_vec(),
        ));
    }
    Ok(std::env::var_os(env).map(|v| v.into_encoded_bytes()))
}

struct Ctx<'a> {
    g: &'a Global,
    cancel: CancellationToken,
    /// Repository locks this command holds; released when it ends.
    locks: std::sync::Mutex<Vec<crate::repository::LockGuard>>,
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

    fn password(&self) -> Result<Vec<u8>, Error> {
        read_secret(self.g.password_file.as_deref(), "LIFEBOAT_PASSWORD")?.ok_or(Error::NoPassword)
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

    async fn release_locks(&self) {
        let guards: Vec<_> = std::mem::take(&mut *self.locks.lock().unwrap());
        for g in guards {
            if let Err(e) = g.release().await {
                tracing::warn!("could not release a repository lock (it expires by itself): {e}");
            }
        }
    }

    async fn open(&self) -> Result<Arc<Repository>, Error> {
        let store = self.store().await?;
        let pw = self.password()?;
        Ok(Arc::new(
            Repository::open(store, &pw, self.cache_root(), self.cancel.clone()).await?,
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

/// Runs one command. Ctrl-C cancels storage calls in flight; nothing half-written is
/// committed, because a snapshot is written only after everything it needs.
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
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::warn!("interrupted: cancelling");
        c.cancel();
    });
    let ctx = Ctx {
        g: &cli.global,
        cancel,
        locks: Default::default(),
    };
    let result = match &cli.command {
        Command::Repo { command } => repo_command(&ctx, command).await,
        Command::Volume { command } => volume_command(&ctx, command).await,
        Command::Snapshots => snapshots(&ctx).await,
        Command::Backup { command } => backup_command(&ctx, command).await,
        Command::Restore { command } => restore_command(&ctx, command).await,
        Command::Demo { dir, size_mib } => demo(&ctx, dir.clone(), *size_mib).await,
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
        } => ops::prune(&ctx, *dry_run, *repack_threshold).await,
        Command::DemoData { command } => demo_data(command),
    };
    ctx.release_locks().await;
    result
}

async fn repo_command(ctx: &Ctx<'_>, cmd: &RepoCommand) -> Result<(), Error> {
    match cmd {
        RepoCommand::Init {
            chunk_size_kib,
            pack_size_mib,
            compression,
            insecure_fast_kdf,
        } => {
            let store = ctx.store().await?;
            let pw = ctx.password()?;
            let opts = InitOptions {
                chunk_size: chunk_size_kib.saturating_mul(1024),
                pack_size: pack_size_mib.saturating_mul(1 << 20),
                compression_level: *compression,
                kdf: if *insecure_fast_kdf {
                    KdfParams::INSECURE_FAST
                } else {
                    KdfParams::DEFAULT
                },
            };
            let repo = Repository::init(store, &pw, &opts, ctx.cancel.clone()).await?;
            let cfg = repo.config();
            ctx.emit(cfg, || {
                format!(
                    "created repository {} at {} (blocks {} KiB, packs {} MiB, zstd {})",
                    &cfg.id[..8],
                    repo.location(),
                    cfg.chunk_size >> 10,
                    cfg.pack_size >> 20,
                    cfg.compression_level
                )
            });
            Ok(())
        }
        RepoCommand::Check { read_data } => {
            let repo = ctx.open().await?;
            let report = repo
                .check(&CheckOptions {
                    read_data: *read_data,
                })
                .await?;
            if !ctx.g.json {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                for e in &report.errors {
                    eprintln!("damaged: {e}");
                }
            }
            ctx.emit(&report, || {
                format!(
                    "{}: {} snapshots, {} index objects, {} packs, {} blobs{}",
                    if report.ok() {
                        "no damage found"
                    } else {
                        "DAMAGE FOUND"
                    },
                    report.snapshots,
                    report.index_files,
                    report.packs,
                    report.blobs,
                    if *read_data {
                        format!(
                            ", {} packs ({} bytes) read and verified",
                            report.packs_read, report.bytes_read
                        )
                    } else {
                        String::new()
                    }
                )
            });
            if report.ok() {
                Ok(())
            } else {
                Err(Error::CheckFailed(report.errors.len()))
            }
        }
        RepoCommand::Key { command } => {
            let repo = ctx.open().await?;
            match command {
                KeyCommand::Add {
                    new_password_file,
                    insecure_fast_kdf,
                } => {
                    let pw = read_secret(new_password_file.as_deref(), "LIFEBOAT_NEW_PASSWORD")?
                        .ok_or(Error::NoNewPassword)?;
                    let kdf = if *insecure_fast_kdf {
                        KdfParams::INSECURE_FAST
                    } else {
                        KdfParams::DEFAULT
                    };
                    let id = repo.add_key(&pw, kdf).await?;
                    ctx.emit(&serde_json::json!({"added": id}), || {
                        format!("added key {}", id.short())
                    });
                }
                KeyCommand::Remove { id } => {
                    let removed = repo.remove_key(id).await?;
                    ctx.emit(&serde_json::json!({"removed": removed}), || {
                        format!("removed key {}", removed.short())
                    });
                }
                KeyCommand::List => {
                    let keys = repo.list_keys().await?;
                    ctx.emit(&keys, || {
                        keys.iter()
                            .map(|k| {
                                format!(
                                    "{} {} {}{}",
                                    k.id.short(),
                                    k.created,
                                    k.hostname,
                                    if k.current { " (current)" } else { "" }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                }
            }
            Ok(())
        }
    }
}

async fn volume_command(ctx: &Ctx<'_>, cmd: &VolumeCommand) -> Result<(), Error> {
    match cmd {
        VolumeCommand::Backup {
            name,
            source,
            changed_ranges,
            full,
            label,
            csi_delta,
        } => {
            let repo = ctx.open_shared(&format!("volume backup {name}")).await?;
            let mut opts = BackupOptions::new(name, source);
            opts.changed_ranges = changed_ranges.clone();
            opts.given_ranges = csi_delta.ranges(&repo, name, &ctx.cancel).await;
            opts.full = *full;
            opts.label = label.clone();
            let pb = ctx.progress(&format!("backup {name}"));
            let out = backup_volume(repo, &opts, &pb).await?;
            pb.finish_and_clear();
            ctx.emit(&out, || {
                let s = &out.stats;
                format!(
                    "snapshot {} of {name} ({}): read {}, new {}, uploaded {}, {}/{} blocks changed, {:.2}s",
                    out.snapshot_id.short(),
                    out.change_source,
                    human(s.bytes_read),
                    human(s.bytes_new),
                    human(s.bytes_uploaded),
                    s.blocks_changed,
                    s.blocks_total,
                    s.duration_seconds
                )
            });
            Ok(())
        }
        VolumeCommand::Restore {
            snapshot,
            target,
            overwrite,
            downloads,
        } => {
            let repo = ctx
                .open_shared(&format!("volume restore {snapshot}"))
                .await?;
            let (id, snap) = repo.resolve_snapshot(snapshot).await?;
            let pb = ctx.progress(&format!("restore {}", id.short()));
            let opts = RestoreOptions {
                downloads: *downloads,
                overwrite: *overwrite,
            };
            let stats = restore_volume(repo, id, &snap, target, &opts, &pb).await?;
            pb.finish_and_clear();
            ctx.emit(&stats, || {
                format!(
                    "restored {} ({}) to {} [{}]: wrote {} in {} blocks, {} blocks already identical, fetched {}, {:.2}s",
                    id.short(),
                    snap.name,
                    stats.target,
                    stats.mode,
                    human(stats.bytes_written),
                    stats.blocks_written,
                    stats.blocks_unchanged,
                    human(stats.bytes_fetched),
                    stats.duration_seconds
                )
            });
            Ok(())
        }
        VolumeCommand::Verify {
            snapshot,
            target,
            report_file,
        } => {
            let repo = ctx
                .open_shared(&format!("volume verify {snapshot}"))
                .await?;
            let (id, snap) = repo.resolve_snapshot(snapshot).await?;
            let index = repo.load_index().await?;
            let (verified, n) = crate::standby::verify_volume(&repo, &index, &snap, target).await?;
            let report = VerifyReport {
                snapshot: id.to_hex(),
                verified,
                blocks_verified: n,
                blocks_total: snap.blocks(),
            };
            if let Some(f) = report_file {
                let text = serde_json::to_string(&report).expect("serialises");
                if let Err(e) = std::fs::write(f, text) {
                    tracing::warn!("cannot write the report to {}: {e}", f.display());
                }
            }
            ctx.emit(&report, || {
                format!(
                    "{}: {} of {} blocks match snapshot {} ({}){}",
                    target.display(),
                    n,
                    report.blocks_total,
                    id.short(),
                    snap.name,
                    if verified { "" } else { ": DIFFERENT" }
                )
            });
            if verified || report_file.is_some() {
                Ok(())
            } else {
                Err(Error::VolumeDiffers {
                    target: target.display().to_string(),
                    snapshot: id.short(),
                    block: n,
                })
            }
        }
    }
}

async fn snapshots(ctx: &Ctx<'_>) -> Result<(), Error> {
    let repo = ctx.open().await?;
    let all = repo.list_snapshots().await?;
    if ctx.g.json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id, "name": s.name, "time": rfc3339(s.time),
                    "size": s.size, "parent": s.parent, "hostname": s.hostname, "source": s.source,
                    "change_source": s.change_source, "stats": s.stats,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
    } else if all.is_empty() {
        println!("no snapshots");
    } else {
        println!(
            "{:<10} {:<25} {:<20} {:>10} {:<10}",
            "ID", "TIME", "NAME", "SIZE", "PARENT"
        );
        for (id, s) in &all {
            println!(
                "{:<10} {:<25} {:<20} {:>10} {:<10}",
                id.short(),
                rfc3339(s.time),
                s.name,
                human(s.size),
                s.parent.map(|p| p.short()).unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(())
}

fn csv(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

async fn backup_command(ctx: &Ctx<'_>, cmd: &BackupCommand) -> Result<(), Error> {
    match cmd {
        BackupCommand::Create {
            name,
            namespaces,
            selector,
            include_resources,
            exclude_resource_types,
            cluster_dir,
            context,
            pre_rules,
            post_rules,
            include_volumes,
            schedule,
            snapshot_class,
            group_snapshot_class,
            movers,
        } => {
            let load = |files: &[PathBuf]| -> Result<Vec<crate::hooks::Rule>, Error> {
                let mut out = Vec::new();
                for f in files {
                    out.extend(crate::hooks::load_rules(f)?);
                }
                Ok(out)
            };
            let consistency = ConsistencyOptions {
                include_volumes: *include_volumes,
                pre: load(pre_rules)?,
                post: load(post_rules)?,
                schedule: schedule.clone(),
                ..Default::default()
            };
            let scope = kcluster::Scope {
                namespaces: namespaces.clone(),
                selector: Selector::parse(selector)?,
                include: ResourceFilter::parse_list("--include-resources", include_resources)?,
                exclude_types: csv(exclude_resource_types),
            };
            let filters = BackupFilters {
                namespaces: namespaces.clone(),
                selector: selector.clone(),
                include_resources: csv(include_resources),
                exclude_resource_types: csv(exclude_resource_types),
            };
            let out = match cluster_dir {
                Some(dir) => {
                    let cluster = ClusterDir::new(dir);
                    let source = cluster.describe();
                    let all = tokio::task::spawn_blocking(move || cluster.load())
                        .await
                        .map_err(|e| Error::Worker(e.to_string()))??;
                    let selected = kcluster::select(&all, &scope, &source)?;
                    let repo = ctx.open_shared(&format!("backup {name}")).await?;
                    let dir = ClusterDir::new(dir);
                    volumes::backup_cluster_dir(
                        repo,
                        name,
                        &dir,
                        selected,
                        filters,
                        &consistency,
                        &ctx.cancel,
                    )
                    .await?
                }
                None => {
                    let live = LiveCluster::connect(context.as_deref()).await?;
                    let repo = ctx.open_shared(&format!("backup {name}")).await?;
                    let mut settings = movers.settings(ctx.g);
                    settings.snapshot_class = snapshot_class.clone();
                    settings.group_snapshots = group_snapshot_class.clone();
                    volumes::backup_live(
                        repo,
                        name,
                        &live,
                        &scope,
                        filters,
                        &consistency,
                        settings,
                        &ctx.cancel,
                    )
                    .await?
                }
            };
            ctx.emit(&out, || {
                let mut text = format!(
                    "backup {name} ({}): {} objects, {} new, uploaded {}, {:.2}s",
                    out.id.short(),
                    out.objects,
                    out.objects_new,
                    human(out.bytes_uploaded),
                    out.duration_seconds
                );
                for v in &out.volumes {
                    text.push_str(&format!("\n{}", volume_line(v)));
                }
                for r in &out.rules {
                    text.push_str(&format!(
                        "\n{} rule {} in {}/{}: `{}` {}",
                        r.phase, r.rule, r.namespace, r.pod, r.command, r.outcome
                    ));
                }
                for w in &out.warnings {
                    text.push_str(&format!("\nwarning: {w}"));
                }
                for f in &out.failures {
                    text.push_str(&format!("\nnot captured: {}: {}", f.what, f.reason));
                }
                text
            });
            if out.failures.is_empty() {
                Ok(())
            } else {
                Err(Error::PartialBackup(out.failures.len()))
            }
        }
        BackupCommand::List => {
            let repo = ctx.open().await?;
            let all = record::list_backups(&repo).await?;
            let rows: Vec<serde_json::Value> = all
                .iter()
                .map(|(id, b)| {
                    serde_json::json!({"id": id, "name": b.name, "time": rfc3339(b.time),
                        "source": b.source, "namespaces": b.filters.namespaces, "objects": b.objects.len()})
                })
                .collect();
            ctx.emit(&rows, || {
                if all.is_empty() {
                    return "no backups".into();
                }
                let mut out = format!(
                    "{:<10} {:<25} {:<24} {:>8}  NAMESPACES",
                    "ID", "TIME", "NAME", "OBJECTS"
                );
                for (id, b) in &all {
                    out.push_str(&format!(
                        "\n{:<10} {:<25} {:<24} {:>8}  {}",
                        id.short(),
                        rfc3339(b.time),
                        b.name,
                        b.objects.len(),
                        b.filters.namespaces.join(",")
                    ));
                }
                out
            });
            Ok(())
        }
        BackupCommand::Describe { name } => {
            let repo = ctx.open().await?;
            let (id, b) = record::find_backup(&repo, name).await?;
            ctx.emit(&serde_json::json!({"id": id, "backup": b}), || {
                let mut out = format!(
                    "backup {} ({})\ntime: {}\nsource: {}\nnamespaces: {}\nselector: {}\nobjects: {}",
                    b.name,
                    id.short(),
                    rfc3339(b.time),
                    b.source,
                    b.filters.namespaces.join(","),
                    if b.filters.selector.is_empty() { "-" } else { &b.filters.selector },
                    b.objects.len()
                );
                for f in &b.failures {
                    out.push_str(&format!("\nNOT CAPTURED: {}: {}", f.what, f.reason));
                }
                for w in &b.warnings {
                    out.push_str(&format!("\nwarning: {w}"));
                }
                for v in &b.volumes {
                    out.push_str(&format!("\n  {}", volume_line(v)));
                }
                for r in &b.rules {
                    out.push_str(&format!(
                        "\n  {} rule {} {}/{} [{}] `{}`: {}{} ({} → {})",
                        r.phase,
                        r.rule,
                        r.namespace,
                        r.pod,
                        r.container,
                        r.command,
                        r.outcome,
                        r.exit_code.map(|c| format!(" exit {c}")).unwrap_or_default(),
                        rfc3339(r.started),
                        rfc3339(r.ended)
                    ));
                }
                for o in &b.objects {
                    out.push_str(&format!(
                        "\n  {}/{}{} ({} bytes)",
                        o.kind,
                        o.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default(),
                        o.name,
                        o.size
                    ));
                }
                out
            });
            Ok(())
        }
    }
}

async fn restore_command(ctx: &Ctx<'_>, cmd: &RestoreCommand) -> Result<(), Error> {
    let RestoreCommand::Create {
        from_backup,
        namespace_mapping,
        storage_class_mapping,
        include_resources,
        selector,
        start_applications,
        existing_resource_policy,
        keep_status,
        keep_node_ports,
        dry_run,
        output_dir,
        cluster_dir,
        context,
        movers,
    } = cmd;
    let opts = RestorePlanOptions {
        namespaces: Mapping::parse("--namespace-mapping", namespace_mapping)?,
        storage_classes: Mapping::parse("--storage-class-mapping", storage_class_mapping)?,
        include: ResourceFilter::parse_list("--include-resources", include_resources)?,
        selector: Selector::parse(selector)?,
        start_applications: *start_applications,
        sanitise: SanitiseOptions {
            keep_status: *keep_status,
            keep_node_ports: *keep_node_ports,
        },
    };
    if !dry_run && output_dir.is_none() && cluster_dir.is_none() && context.is_none() {
        return Err(Error::NoRestoreTarget);
    }
    let repo = ctx.open_shared(&format!("restore {from_backup}")).await?;
    let (_, backup) = record::find_backup(&repo, from_backup).await?;
    let objects = record::load_objects(&repo, &backup).await?;
    let known: Vec<kcluster::Exported> = objects
        .iter()
        .map(|(r, v)| kcluster::Exported {
            r: r.clone(),
            value: v.clone(),
            origin: String::new(),
        })
        .collect();
    kcluster::check_kinds(
        "--include-resources",
        opts.include.iter().map(|f| f.kind.as_str()),
        &known,
    )?;
    let mut plan = record::plan_restore(objects, &opts);
    let target = cluster_dir.as_ref().map(ClusterDir::new);
    let live = match context {
        Some(ctx) => Some(LiveCluster::connect(Some(ctx)).await?),
        None => None,
    };

    if *dry_run {
        let conflicts = match (&target, &live) {
            (Some(t), _) => record::conflicts(t, &plan)?,
            (None, Some(l)) => {
                let refs: Vec<_> = plan
                    .iter()
                    .filter(|p| p.skipped.is_none())
                    .map(|p| p.target.clone())
                    .collect();
                l.existing(&refs).await?
            }
            (None, None) => Vec::new(),
        };
        let rows: Vec<serde_json::Value> = plan
            .iter()
            .map(|p| {
                serde_json::json!({"source": p.source, "target": p.target, "skipped": p.skipped,
                    "exists": conflicts.contains(&p.target), "object": if p.skipped.is_none() { p.value.clone() } else { serde_json::Value::Null }})
            })
            .collect();
        ctx.emit(&rows, || {
            let mut out = String::new();
            let mut n = 0;
            for p in &plan {
                match &p.skipped {
                    None => {
                        n += 1;
                        let renamed = if p.source != p.target {
                            format!(" (from {})", p.source.display())
                        } else {
                            String::new()
                        };
                        let exists = if conflicts.contains(&p.target) {
                            format!(
                                "  CONFLICT: exists on the target ({:?} policy)",
                                existing_resource_policy
                            )
                        } else {
                            String::new()
                        };
                        out.push_str(&format!(
                            "{n:>4}. apply {}{renamed}{exists}\n",
                            p.target.display()
                        ));
                    }
                    Some(why) => {
                        out.push_str(&format!("      skip  {}: {why}\n", p.source.display()))
                    }
                }
            }
            out.push_str(&format!(
                "dry run: {n} objects would be applied; nothing was changed"
            ));
            out
        });
        return Ok(());
    }

    let results = match (output_dir, &target, &live) {
        (Some(dir), _, _) => {
            let mut r = record::write_output_dir(dir, &plan)?;
            r.extend(
                volumes::restore_volumes_to_dir(
                    repo.clone(),
                    &backup,
                    &plan,
                    dir,
                    ExistingPolicy::Skip,
                )
                .await,
            );
            r
        }
        (None, Some(t), _) => {
            // The data first: a workload must not start on an empty volume.
            let mut r = volumes::restore_volumes_to_dir(
                repo.clone(),
                &backup,
                &plan,
                t.root(),
                *existing_resource_policy,
            )
            .await;
            r.extend(record::apply_to_cluster_dir(
                t,
                &plan,
                *existing_resource_policy,
            )?);
            r
        }
        (None, None, Some(l)) => {
            // The data first: a workload must not start on an empty volume.
            let (mut r, created) =
                volumes::restore_volumes_live(l, movers.settings(ctx.g), &backup, &mut plan, false)
                    .await;
            let objects: Vec<_> = plan
                .iter()
                .filter(|p| p.skipped.is_none() && !created.contains(&p.target))
                .map(record::Planned::apply_item)
                .collect();
            r.extend(
                l.apply(
                    &objects,
                    *existing_resource_policy,
                    Duration::from_secs(120),
                )
                .await?,
            );
            r
        }
        (None, None, None) => unreachable!("checked above"),
    };
    let failed = results
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .count();
    let skipped: Vec<serde_json::Value> = plan
        .iter()
        .filter_map(|p| {
            p.skipped
                .as_ref()
                .map(|why| serde_json::json!({"object": p.source, "reason": why}))
        })
        .collect();
    ctx.emit(&serde_json::json!({"results": results, "not_restored": skipped}), || {
        let mut out = String::new();
        for r in &results {
            out.push_str(&format!("{:<8} {} {}\n", format!("{:?}", r.outcome).to_lowercase(), r.r.display(), r.detail));
        }
        let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
        out.push_str(&format!(
            "restored from {from_backup}: {} created, {} updated, {} skipped, {} failed; {} objects not restored by rule",
            count(Outcome::Created),
            count(Outcome::Updated),
            count(Outcome::Skipped),
            failed,
            skipped.len()
        ));
        out
    });
    if failed > 0 {
        return Err(Error::ObjectsFailed(failed));
    }
    Ok(())
}

/// One claim's data in a backup, as listings show it.
fn volume_line(v: &crate::format::BackedUpVolume) -> String {
    format!(
        "volume {}/{}: snapshot {} ({}, {})",
        v.namespace,
        v.pvc,
        v.snapshot.short(),
        human(v.size),
        v.method
    )
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

fn demo_data(cmd: &DemoDataCommand) -> Result<(), Error> {
    use crate::demo::{generate_image, mutate, write_ranges};
    let derr = |e: std::io::Error| Error::Demo(e.to_string());
    match cmd {
        DemoDataCommand::Generate {
            out,
            size_mib,
            seed,
        } => generate_image(out, size_mib << 20, *seed).map_err(derr),
        DemoDataCommand::Mutate {
            image,
            fraction,
            extent_kib,
            seed,
            ranges_out,
        } => {
            let ranges = mutate(image, *fraction, extent_kib << 10, *seed).map_err(derr)?;
            write_ranges(ranges_out, &ranges).map_err(derr)
        }
    }
}

async fn demo(ctx: &Ctx<'_>, dir: Option<PathBuf>, size_mib: u64) -> Result<(), Error> {
    use crate::demo::{file_hash, generate_image, mutate, write_ranges};
    let derr = |what: &str, e: std::io::Error| Error::Demo(format!("{what}: {e}"));
    let dir = match dir {
        Some(d) => {
            if d.exists()
                && std::fs::read_dir(&d)
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(true)
            {
                return Err(Error::Demo(format!(
                    "{} is not empty; give a new or empty directory",
                    d.display()
                )));
            }
            d
        }
        None => std::env::temp_dir().join(format!("lifeboat-demo-{:08x}", rand::random::<u32>())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| derr("create scratch directory", e))?;
    let say = |s: String| {
        if !ctx.g.json {
            println!("{s}");
        }
    };
    say(format!(
        "lifeboat demo in {} (password \"demo\")",
        dir.display()
    ));
    let image = dir.join("volume.img");
    let size = size_mib.max(1) << 20;
    {
        let image = image.clone();
        tokio::task::spawn_blocking(move || generate_image(&image, size, 42))
            .await
            .map_err(|e| Error::Demo(e.to_string()))?
            .map_err(|e| derr("generate volume", e))?;
    }
    say(format!(
        "1. generated a {size_mib} MiB volume of mixed content (holes, text, random, duplicates)"
    ));
    let store = store::open(
        &dir.join("repo").display().to_string(),
        &ctx.store_options(),
    )
    .await?;
    let repo = Arc::new(
        Repository::init(store, b"demo", &InitOptions::default(), ctx.cancel.clone()).await?,
    );
    say(format!(
        "2. created an encrypted repository at {}",
        dir.join("repo").display()
    ));
    let pb = ctx.progress("full backup");
    let full = backup_volume(
        repo.clone(),
        &BackupOptions::new("demo-volume", &image),
        &pb,
    )
    .await?;
    pb.finish_and_clear();
    say(format!(
        "3. full backup {}: read {}, stored {} ({:.2}s)",
        full.snapshot_id.short(),
        human(full.stats.bytes_read),
        human(full.stats.bytes_uploaded),
        full.stats.duration_seconds
    ));
    let ranges = {
        let image = image.clone();
        tokio::task::spawn_blocking(move || mutate(&image, 0.01, 64 << 10, 7))
            .await
            .map_err(|e| Error::Demo(e.to_string()))?
            .map_err(|e| derr("change volume", e))?
    };
    let ranges_file = dir.join("changed-ranges.json");
    write_ranges(&ranges_file, &ranges).map_err(|e| derr("write ranges", e))?;
    let mut opts = BackupOptions::new("demo-volume", &image);
    opts.changed_ranges = Some(ranges_file);
    let pb = ctx.progress("incremental backup");
    let inc = backup_volume(repo.clone(), &opts, &pb).await?;
    pb.finish_and_clear();
    say(format!(
        "4. changed 1% in 64 KiB extents; incremental backup {}: read {}, stored {} ({:.2}s)",
        inc.snapshot_id.short(),
        human(inc.stats.bytes_read),
        human(inc.stats.bytes_uploaded),
        inc.stats.duration_seconds
    ));
    let (id, snap) = repo.resolve_snapshot("demo-volume:latest").await?;
    let restored = dir.join("restored.img");
    let pb = ctx.progress("restore");
    let rs = restore_volume(
        repo.clone(),
        id,
        &snap,
        &restored,
        &RestoreOptions::default(),
        &pb,
    )
    .await?;
    pb.finish_and_clear();
    let same = file_hash(&image).map_err(|e| derr("hash", e))?
        == file_hash(&restored).map_err(|e| derr("hash", e))?;
    say(format!(
        "5. restored demo-volume:latest to {} ({:.2}s): {}",
        restored.display(),
        rs.duration_seconds,
        if same {
            "bit-identical to the source"
        } else {
            "DIFFERS from the source"
        }
    ));
    let report = repo.check(&CheckOptions { read_data: true }).await?;
    say(format!(
        "6. repo check --read-data: {} ({} packs verified)",
        if report.ok() {
            "no damage"
        } else {
            "DAMAGE FOUND"
        },
        report.packs_read
    ));
    if ctx.g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": dir, "full": full, "incremental": inc, "restore": rs,
                "identical": same, "check_ok": report.ok(),
            }))
            .expect("serialises")
        );
    }
    if !same {
        return Err(Error::Demo(
            "the restored volume differs from the source".into(),
        ));
    }
    if !report.ok() {
        return Err(Error::CheckFailed(report.errors.len()));
    }
    Ok(())
}
