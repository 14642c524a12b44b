//! No secret in any output (issue #14, point 6, the parts off a cluster): the repository
//! password, the bucket's secret key and the data of a backed-up Secret reach neither stdout
//! nor stderr at `-vv`, nor the catalog, nor the cache directory, through a whole flow on
//! Garage. (The restore's own output directory holds the restored Secret, as asked; it is not
//! scanned. The Events, statuses and mover command lines of the controller need the cluster.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{files, garage, lifeboat, ok, run, tmp, Run};

/// What must appear nowhere: (what it is, its bytes).
fn needles<'a>(password: &'a str, secret_key: &'a str) -> Vec<(&'static str, &'a [u8])> {
    vec![
        ("the repository password", password.as_bytes()),
        ("the bucket's secret key", secret_key.as_bytes()),
        // fixtures/clusters/prod's Secret pg/postgres-credentials, decoded and as stored.
        ("a backed-up Secret's value", b"super-secret-password"),
        (
            "a backed-up Secret's value, base64",
            b"c3VwZXItc2VjcmV0LXBhc3N3b3Jk",
        ),
    ]
}

/// Each needle found in `bytes`, named with `what`.
fn leaks(what: &str, bytes: &[u8], needles: &[(&str, &[u8])]) -> Vec<String> {
    needles
        .iter()
        .filter(|(_, n)| bytes.windows(n.len()).any(|w| w == *n))
        .map(|(name, _)| format!("{name} in {what}"))
        .collect()
}

#[test]
fn no_secret_reaches_stdout_stderr_at_debug_the_catalog_or_the_cache() {
    let g = garage();
    let d = tmp();
    let password = format!("pw-{:016x}", rand::random::<u64>());
    let repo = format!("s3://{}/{}", g.bucket, g.unique_prefix());
    let (state, cache) = (d.path().join("state"), d.path().join("cache"));
    let prod = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/clusters/prod");
    let img = d.path().join("v.img");
    std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    let lb = || {
        let mut c: Command = lifeboat();
        // -vv decides the level (debug, the SDK at info), not the suite's LIFEBOAT_LOG.
        c.env_remove("LIFEBOAT_LOG")
            .envs(g.env())
            .env("LIFEBOAT_PASSWORD", &password)
            .arg("-vv")
            .args(["--repo", &repo, "--state-dir"])
            .arg(&state)
            .arg("--cache-dir")
            .arg(&cache);
        c
    };
    let out_dir: PathBuf = d.path().join("restored");
    let mut runs: Vec<(String, Run)> = Vec::new();
    let mut step = |name: &str, c: &mut Command| runs.push((name.to_string(), ok(run(c))));
    step(
        "repo init",
        lb().args(["repo", "init", "--insecure-fast-kdf"]),
    );
    step(
        "backup create",
        lb().args([
            "backup",
            "create",
            "apps",
            "--json",
            "-n",
            "pg",
            "--cluster-dir",
        ])
        .arg(&prod),
    );
    step(
        "volume backup",
        lb().args(["volume", "backup", "--json", "--name", "v"])
            .arg(&img),
    );
    step(
        "backup describe",
        lb().args(["backup", "describe", "apps", "--json"]),
    );
    step(
        "restore create",
        lb().args(["restore", "create", "--from-backup", "apps", "--output-dir"])
            .arg(&out_dir),
    );
    step("restore list", lb().args(["restore", "list", "--json"]));
    step(
        "catalog rebuild",
        lb().args(["catalog", "rebuild", "--json"]),
    );
    step("repo check", lb().args(["repo", "check", "--read-data"]));
    // The flow ran at debug and reached the places scanned below, so a clean scan means
    // something: the SDK's requests were logged, the catalog and the cache were written.
    let stderr: String = runs.iter().map(|(_, r)| r.stderr.as_str()).collect();
    assert!(stderr.contains("DEBUG"), "-vv logs at debug: {stderr}");
    assert!(state.join("catalog.sqlite").is_file());
    assert!(!files(&cache).is_empty(), "the cache holds objects");
    let needles = needles(&password, &g.secret_key);
    assert!(
        files(&out_dir)
            .iter()
            .any(|f| !leaks("", &std::fs::read(f).unwrap(), &needles[2..]).is_empty()),
        "the restore gives the Secret back where asked (so the scan can find it)"
    );

    let mut found = Vec::new();
    for (name, r) in &runs {
        found.extend(leaks(
            &format!("{name}'s stdout"),
            r.stdout.as_bytes(),
            &needles,
        ));
        found.extend(leaks(
            &format!("{name}'s stderr"),
            r.stderr.as_bytes(),
            &needles,
        ));
    }
    for f in files(&state).into_iter().chain(files(&cache)) {
        let bytes = std::fs::read(&f).unwrap();
        found.extend(leaks(&f.display().to_string(), &bytes, &needles));
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}
