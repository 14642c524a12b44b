//! `version`, `completion` and `crds`: what this binary is, shell completion scripts, and
//! the CustomResourceDefinitions of its resources. Need no repository.

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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
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

/// `lifeboat crds`: every CustomResourceDefinition, into a file each under `out`, or on
/// standard output as one multi-document stream.
pub fn crds(out: Option<&std::path::Path>) -> Result<(), Error> {
    let files = crate::crd::rendered();
    let Some(dir) = out else {
        let docs: Vec<String> = files.into_iter().map(|(_, text)| text).collect();
        print!("{}", docs.join("---\n"));
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Usage(format!("cannot create {}: {e}", dir.display())))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
