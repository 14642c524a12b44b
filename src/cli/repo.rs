//! `repo init|check|repair|unlock|key`: the repository, its upkeep after damage or a killed
//! command, and the passwords that open it.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{read_secret, Ctx, Error};
use crate::format::KdfParams;
use crate::repository::{CheckOptions, InitOptions, RepairOptions, RepairReport, Repository};

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a new repository at --repo (refused where one exists or other objects are).
    #[command(
        after_help = "Example:\n  LIFEBOAT_PASSWORD_FILE=pw.txt lifeboat repo init --repo s3://backups/prod"
    )]
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
    #[command(after_help = "Example:\n  lifeboat repo check --read-data")]
    Check {
        /// Also download every pack and verify every blob.
        #[arg(long)]
        read_data: bool,
    },
    /// Rebuild what damage broke: the index anew from the packs' own trailers, and remove the
    /// snapshots that are damaged or reference data no pack holds, so every snapshot left
    /// restores and prune runs again. Never deletes a pack. Takes an exclusive lock.
    ///
    /// Exit 0: repaired and nothing lost (or nothing to do). Exit 4: repaired, but data is
    /// lost: the snapshots removed, the packs that cannot be read, the backup records that
    /// cannot be read (removed) and those whose volumes are gone are listed (with --dry-run:
    /// would be). Back those up again (`volume backup --full`, `backup create`).
    ///
    /// With --read-data every pack is downloaded and every blob opened: only blobs that verify
    /// are indexed, so the snapshots that use a damaged blob (what `check --read-data` finds)
    /// are removed; the good blobs of a damaged pack move to new packs and the damaged pack is
    /// deleted. A blob damaged in one pack but intact in another keeps working.
    #[command(after_help = "Example:\n  lifeboat repo repair --dry-run")]
    Repair {
        /// Report what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also download every pack and verify every blob (as `check --read-data`).
        #[arg(long)]
        read_data: bool,
    },
    /// Remove locks left behind: expired ones, those of processes of this host that are gone,
    /// and objects under locks/ that are not locks. A lock younger than its expiry is kept
    /// unless --force; a lock whose holder still runs on this host is always kept (stop that
    /// process first).
    ///
    /// Exit 0: no lock left. Exit 3: some locks were kept (listed; they expire by themselves).
    #[command(after_help = "Example:\n  lifeboat repo unlock")]
    Unlock {
        /// Also remove unexpired locks whose holder cannot be checked from here (another host
        /// or container): only once you know it is gone, since its holder may still be writing.
        #[arg(long)]
        force: bool,
    },
    /// Passwords: each key object wraps the same master key, so no data is re-encrypted.
    #[command(after_help = "Example:\n  lifeboat repo key add --new-password-file second.txt")]
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a password (read from --new-password-file or LIFEBOAT_NEW_PASSWORD).
    #[command(after_help = "Example:\n  lifeboat repo key add --new-password-file second.txt")]
    Add {
        /// Read the new password from this file (else LIFEBOAT_NEW_PASSWORD); one trailing
        /// newline is dropped.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[arg(long, hide = true)]
        insecure_fast_kdf: bool,
    },
    /// Remove a password's key by id (or unique prefix); the last key cannot be removed.
    #[command(after_help = "Example:\n  lifeboat repo key remove 3f2a9c")]
    Remove {
        /// The key's id, or a unique prefix of it (`repo key list` shows them).
        id: String,
    },
    /// List keys.
    #[command(after_help = "Example:\n  lifeboat repo key list --json")]
    List,
}

pub(super) async fn repo(ctx: &Ctx<'_>, cmd: &RepoCommand) -> Result<(), Error> {
    match cmd {
        RepoCommand::Init {
            chunk_size_kib,
            pack_size_mib,
            compression,
            insecure_fast_kdf,
        } => {
            let opts = InitOptions {
                chunk_size: chunk_size_kib.saturating_mul(1024),
                pack_size: pack_size_mib.saturating_mul(1 << 20),
                compression_level: *compression,
                kdf: kdf(*insecure_fast_kdf),
            };
            init(ctx, &opts).await
        }
        RepoCommand::Check { read_data } => check(ctx, *read_data).await,
        RepoCommand::Repair { dry_run, read_data } => repair(ctx, *dry_run, *read_data).await,
        RepoCommand::Unlock { force } => unlock(ctx, *force).await,
        RepoCommand::Key { command } => key(ctx, command).await,
    }
}

/// Key derivation: the default, or the weak one tests use.
fn kdf(insecure_fast: bool) -> KdfParams {
    if insecure_fast {
        KdfParams::INSECURE_FAST
    } else {
        KdfParams::DEFAULT
    }
}

/// `repo init --json`: the repository made (its stored `config`, in the output vocabulary).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct RepoCreated {
    /// The repository's id (32 hex digits): names its local cache.
    pub id: String,
    /// Where it is (`s3://bucket/prefix`, a directory).
    pub location: String,
    /// The repository format version written.
    pub format_version: u32,
    /// The fixed block size of volume snapshots.
    pub chunk_size_bytes: u32,
    /// Packs are sealed once they reach this size.
    pub pack_size_bytes: u32,
    /// The zstd level of blobs (0: no compression).
    pub compression_level: i32,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
}

/// `repo key add --json`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct KeyAdded {
    /// The new key's id (hex).
    pub added: crate::format::KeyId,
}

/// `repo key remove --json`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct KeyRemoved {
    /// The removed key's id (hex).
    pub removed: crate::format::KeyId,
}

async fn init(ctx: &Ctx<'_>, opts: &InitOptions) -> Result<(), Error> {
    let store = ctx.store().await?;
    let pw = ctx.password_asked(true)?;
    let repo = Repository::init(store, &pw, opts, ctx.cancel.clone()).await?;
    let cfg = repo.config();
    let created = RepoCreated {
        id: cfg.id.clone(),
        location: repo.location(),
        format_version: cfg.version,
        chunk_size_bytes: cfg.chunk_size,
        pack_size_bytes: cfg.pack_size,
        compression_level: cfg.compression_level,
        created_at: crate::util::timestamp(cfg.created),
    };
    ctx.emit(&created, || {
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

async fn check(ctx: &Ctx<'_>, read_data: bool) -> Result<(), Error> {
    let repo = ctx.open().await?;
    let report = repo.check(&CheckOptions { read_data }).await?;
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
            if read_data {
                format!(
                    ", {} packs ({} bytes) read and verified",
                    report.packs_read, report.read_bytes
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

async fn repair(ctx: &Ctx<'_>, dry_run: bool, read_data: bool) -> Result<(), Error> {
    let repo = ctx.open().await?;
    let report = repo.repair(&RepairOptions { dry_run, read_data }).await?;
    ctx.emit(&report, || repair_text(&report));
    match report.losses() {
        0 => Ok(()),
        n => Err(Error::RepairLost { lost: n, dry_run }),
    }
}

fn repair_text(r: &RepairReport) -> String {
    let would = if r.dry_run { "would be " } else { "" };
    let mut lines = vec![if r.dry_run {
        format!(
            "dry run, nothing changed: {} packs ({} blobs) would be indexed from their trailers",
            r.packs_indexed, r.blobs_indexed
        )
    } else {
        format!(
            "{} packs ({} blobs) indexed from their trailers: {} index object(s) written, {} replaced",
            r.packs_indexed, r.blobs_indexed, r.index_files_written, r.index_files_replaced
        )
    }];
    for p in &r.packs_unreadable {
        lines.push(format!(
            "unreadable pack, left in place (its blobs are not indexed): {p}"
        ));
    }
    for p in &r.packs_damaged {
        lines.push(format!(
            "damaged pack, its good blobs {would}moved to new packs and it {would}deleted: {p}"
        ));
    }
    for b in &r.blobs_lost {
        lines.push(format!("damaged blob, held intact by no other pack: {b}"));
    }
    for s in &r.snapshots_removed {
        lines.push(format!("snapshot {would}removed: {s}"));
    }
    for b in &r.backups_affected {
        lines.push(format!("backup {b}"));
    }
    for b in &r.backups_removed {
        lines.push(format!("unreadable backup record {would}removed: {b}"));
    }
    lines.push(match r.losses() {
        0 => "nothing lost".to_string(),
        n => format!("{n} loss(es): back the affected volumes and applications up again"),
    });
    lines.join("\n")
}

async fn unlock(ctx: &Ctx<'_>, force: bool) -> Result<(), Error> {
    let repo = ctx.open().await?;
    let report = repo.unlock(force).await?;
    ctx.emit(&report, || {
        let mut lines: Vec<String> = report
            .removed
            .iter()
            .map(|r| format!("removed {r}"))
            .collect();
        lines.extend(report.kept.iter().map(|k| format!("kept {k}")));
        if lines.is_empty() {
            lines.push("no locks".into());
        }
        lines.join("\n")
    });
    match report.kept.len() {
        0 => Ok(()),
        n => Err(Error::LocksKept(n)),
    }
}

async fn key(ctx: &Ctx<'_>, cmd: &KeyCommand) -> Result<(), Error> {
    let repo = ctx.open().await?;
    match cmd {
        KeyCommand::Add {
            new_password_file,
            insecure_fast_kdf,
        } => {
            let pw = new_password(new_password_file.as_deref())?;
            let id = repo.add_key(&pw, kdf(*insecure_fast_kdf)).await?;
            ctx.emit(&KeyAdded { added: id }, || {
                format!("added key {}", id.short())
            });
        }
        KeyCommand::Remove { id } => {
            let removed = repo.remove_key(id).await?;
            ctx.emit(&KeyRemoved { removed }, || {
                format!("removed key {}", removed.short())
            });
        }
        KeyCommand::List => {
            let keys = repo.list_keys().await?;
            ctx.emit(&keys, || {
                super::table(
                    &["ID", "CREATED", "HOSTNAME", "CURRENT"],
                    &[],
                    keys.iter().map(|k| {
                        vec![
                            k.id.short(),
                            crate::util::timestamp(k.created_at),
                            k.hostname.clone(),
                            match (k.current, &k.damaged) {
                                (_, Some(why)) => format!("damaged: {why}"),
                                (true, None) => "current".into(),
                                (false, None) => String::new(),
                            },
                        ]
                    }),
                )
            });
        }
    }
    Ok(())
}

/// The password `key add` adds: from the file, else `LIFEBOAT_NEW_PASSWORD`.
fn new_password(file: Option<&Path>) -> Result<Vec<u8>, Error> {
    match read_secret(file, "LIFEBOAT_NEW_PASSWORD")? {
        Some(pw) => Ok(pw),
        None => super::prompt_secret("new password", true)?.ok_or(Error::NoNewPassword),
    }
}
