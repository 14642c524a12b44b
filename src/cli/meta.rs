//! `version` and `completion`: what this binary is, and shell completion scripts. Need no
//! repository.

use clap::CommandFactory;

use super::{Cli, Ctx, Error};

/// The git commit this binary was built from (12 hex digits), or "unknown" (see build.rs).
pub const GIT_COMMIT: &str = env!("LIFEBOAT_GIT_COMMIT");

/// `--version`'s text: the crate version and the commit.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LIFEBOAT_GIT_COMMIT"),
    ")"
);

/// `lifeboat version`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    /// The crate version.
    pub version: &'static str,
    /// The git commit, or "unknown".
    pub commit: &'static str,
    /// The repository format this binary reads and writes ([`crate::format::FORMAT_VERSION`]).
    pub format_version: u32,
}

impl VersionInfo {
    pub fn current() -> VersionInfo {
        VersionInfo {
            version: env!("CARGO_PKG_VERSION"),
            commit: GIT_COMMIT,
            format_version: crate::format::FORMAT_VERSION,
        }
    }
}

pub(super) fn version(ctx: &Ctx<'_>) -> Result<(), Error> {
    let v = VersionInfo::current();
    ctx.emit(&v, || {
        format!(
            "lifeboat {}\ncommit: {}\nrepository format: {}",
            v.version, v.commit, v.format_version
        )
    });
    Ok(())
}

/// Writes the completion script of `shell` on standard output.
pub(super) fn completion(shell: clap_complete::Shell) -> Result<(), Error> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "lifeboat",
        &mut std::io::stdout(),
    );
    Ok(())
}
