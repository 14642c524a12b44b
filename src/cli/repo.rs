//! `repo init|check|key`: the repository and the passwords that open it.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{read_secret, Ctx, Error};
use crate::format::KdfParams;
use crate::repository::{CheckOptions, InitOptions, Repository};

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

async fn init(ctx: &Ctx<'_>, opts: &InitOptions) -> Result<(), Error> {
    let store = ctx.store().await?;
    let pw = ctx.password()?;
    let repo = Repository::init(store, &pw, opts, ctx.cancel.clone()).await?;
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

async fn key(ctx: &Ctx<'_>, cmd: &KeyCommand) -> Result<(), Error> {
    let repo = ctx.open().await?;
    match cmd {
        KeyCommand::Add {
            new_password_file,
            insecure_fast_kdf,
        } => {
            let pw = new_password(new_password_file.as_deref())?;
            let id = repo.add_key(&pw, kdf(*insecure_fast_kdf)).await?;
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

/// The password `key add` adds: from the file, else `LIFEBOAT_NEW_PASSWORD`.
fn new_password(file: Option<&Path>) -> Result<Vec<u8>, Error> {
    read_secret(file, "LIFEBOAT_NEW_PASSWORD")?.ok_or(Error::NoNewPassword)
}
