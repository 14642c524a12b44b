//! Build information for `lifeboat version`: the git commit lifeboat is built from, as
//! LIFEBOAT_GIT_COMMIT (12 hex digits). "unknown" when it cannot be had: a source tarball
//! without .git, no git installed, or a package directory that is not the top of its own
//! checkout (a tarball unpacked inside some other repository). A packager can set
//! LIFEBOAT_GIT_COMMIT itself. Never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The commit of the checkout whose top is `dir`, with the files to watch for a new one.
fn commit(dir: &Path) -> Option<(String, Vec<PathBuf>)> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    let mut watch = Vec::new();
    if let Some(git_dir) = git(dir, &["rev-parse", "--git-dir"]).map(abs) {
        watch.push(git_dir.join("HEAD"));
    }
    if let Some(common) = git(dir, &["rev-parse", "--git-common-dir"]).map(abs) {
        watch.push(common.join("packed-refs"));
        if let Some(r) = git(dir, &["rev-parse", "--symbolic-full-name", "HEAD"]) {
            watch.push(common.join(r));
        }
    }
    Some((commit, watch))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIFEBOAT_GIT_COMMIT");
    let given = std::env::var("LIFEBOAT_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty());
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let found = given.is_none().then(|| commit(&dir)).flatten();
    let commit = match (given, found) {
        (Some(c), _) => c,
        (None, Some((c, watch))) => {
            for w in watch.iter().filter(|w| w.exists()) {
                println!("cargo:rerun-if-changed={}", w.display());
            }
            c
        }
        (None, None) => "unknown".to_string(),
    };
    println!("cargo:rustc-env=LIFEBOAT_GIT_COMMIT={commit}");
}
