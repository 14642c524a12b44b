//! The `lifeboat` binary as scripts call it: commands, --json, exit codes, messages, SIGKILL.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lifeboat::demo::{generate_image, mutate, write_ranges};

use crate::support::{garage, json, lifeboat, ok, run, tmp};
use crate::volume::same;

/// `2026-12-02T14:03:07.123Z`: RFC 3339, UTC, to the millisecond (the one form of a time in
/// output).
pub fn is_ms_utc(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 24
        && time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok()
        && b[19] == b'.'
        && b[23] == b'Z'
}

fn with_repo(repo: &str) -> Command {
    let mut c = lifeboat();
    c.env("LIFEBOAT_REPOSITORY", repo)
        .env("LIFEBOAT_PASSWORD", "pw")
        .arg("--no-cache");
    c
}

fn init(repo: &str) {
    ok(run(with_repo(repo).args([
        "repo",
        "init",
        "--insecure-fast-kdf",
        "--chunk-size-kib",
        "64",
        "--pack-size-mib",
        "1",
    ])));
}

#[test]
fn backup_restore_list_check_with_json() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();
    let src = d.path().join("v.img");
    generate_image(&src, 5 << 20, 21).unwrap();
    init(&repo);

    // --json after the subcommand, --repo before it: global options go anywhere.
    let r = ok(run(lifeboat()
        .env("LIFEBOAT_PASSWORD", "pw")
        .args(["--repo", &repo, "volume", "backup", "--name", "pg-data"])
        .arg(&src)
        .arg("--json")));
    let v = json(&r);
    for field in [
        "snapshot_id",
        "read_bytes",
        "new_bytes",
        "uploaded_bytes",
        "blocks_total",
        "blocks_changed",
        "duration_seconds",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["blocks_total"], 80);
    let first = v["snapshot_id"].as_str().unwrap().to_string();

    let ranges = mutate(&src, 0.01, 64 << 10, 3).unwrap();
    let rf = d.path().join("ranges.json");
    write_ranges(&rf, &ranges).unwrap();
    let v = json(&ok(run(with_repo(&repo)
        .args([
            "volume",
            "backup",
            "--json",
            "--name",
            "pg-data",
            "--changed-ranges",
        ])
        .arg(&rf)
        .arg(&src))));
    assert_eq!(v["change_source"], "changed-ranges");
    assert_eq!(v["read_bytes"], ranges.len() as u64 * 65536);

    let list = json(&ok(run(with_repo(&repo).args(["snapshots", "--json"]))));
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["parent_id"], first.as_str());
    let human = ok(run(with_repo(&repo).arg("snapshots")));
    assert!(
        human.stdout.contains("pg-data") && human.stdout.contains(&first[..8]),
        "{}",
        human.stdout
    );

    let out = d.path().join("out.img");
    let v = json(&ok(run(with_repo(&repo)
        .args(["volume", "restore", "pg-data:latest", "--json"])
        .arg(&out))));
    assert_eq!(v["mode"], "new");
    assert!(same(&src, &out));
    // An existing target needs --overwrite.
    let r = run(with_repo(&repo)
        .args(["volume", "restore", &first[..8]])
        .arg(&out));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--overwrite"), "{}", r.stderr);
    // By unique prefix, onto the newer copy: only the changed blocks are written back.
    let v = json(&ok(run(with_repo(&repo)
        .args(["volume", "restore", &first[..8], "--overwrite", "--json"])
        .arg(&out))));
    assert_eq!(v["mode"], "in-place");
    assert_eq!(v["blocks_written"].as_u64().unwrap(), ranges.len() as u64);

    let check = ok(run(with_repo(&repo).args(["repo", "check", "--read-data"])));
    assert!(check.stdout.contains("no damage found"), "{}", check.stdout);
}

#[test]
fn errors_name_the_problem_and_exit_nonzero() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();

    let r = run(with_repo(&repo).arg("snapshots"));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no lifeboat repository") && r.stderr.contains("repo init"),
        "{}",
        r.stderr
    );

    init(&repo);
    let r = run(with_repo(&repo).args(["repo", "init", "--insecure-fast-kdf"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("already holds a lifeboat repository"),
        "{}",
        r.stderr
    );

    let r = run(with_repo(&repo)
        .env("LIFEBOAT_PASSWORD", "wrong")
        .arg("snapshots"));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("password does not open"), "{}", r.stderr);

    let r = run(lifeboat().args(["--repo", &repo, "snapshots"]));
    assert!(r.stderr.contains("LIFEBOAT_PASSWORD"), "{}", r.stderr);
    let r = run(lifeboat().env("LIFEBOAT_PASSWORD", "pw").arg("snapshots"));
    assert!(r.stderr.contains("--repo"), "{}", r.stderr);

    let r = run(with_repo(&repo)
        .args(["volume", "restore", "ghost:latest"])
        .arg(d.path().join("x")));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no snapshot matches `ghost:latest`"),
        "{}",
        r.stderr
    );

    let r = run(with_repo(&repo)
        .args(["volume", "backup", "--name", "v"])
        .arg(d.path().join("missing.img")));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot read source") && r.stderr.contains("missing.img"),
        "{}",
        r.stderr
    );

    let r = run(lifeboat()
        .args(["--repo", "ftp://x", "snapshots"])
        .env("LIFEBOAT_PASSWORD", "pw"));
    assert!(r.stderr.contains("unknown scheme"), "{}", r.stderr);

    let r = run(lifeboat().args(["volume", "backup"]));
    assert_eq!(r.code, 2, "usage errors exit 2");

    // The cause is said once, not once more as the error's source.
    let r = run(lifeboat()
        .args(["--repo", &repo, "--password-file"])
        .arg(d.path().join("no-such-file"))
        .arg("snapshots"));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot read password file"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        r.stderr
    );
}

#[test]
fn password_file_and_key_management() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();
    init(&repo);
    let pwf = d.path().join("pw2");
    std::fs::write(&pwf, "second password\n").unwrap();
    let added = json(&ok(run(with_repo(&repo)
        .args([
            "repo",
            "key",
            "add",
            "--json",
            "--insecure-fast-kdf",
            "--new-password-file",
        ])
        .arg(&pwf))));
    conforms_to_cli_schema("repo-key-add.schema.json", &added);
    let keys = json(&ok(run(lifeboat()
        .args(["--repo", &repo, "--password-file"])
        .arg(&pwf)
        .args(["repo", "key", "list", "--json"]))));
    conforms_to_cli_schema("repo-key-list.schema.json", &keys);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert!(keys
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == added["added"] && k["current"] == true));
    let old = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let removed = json(&ok(run(lifeboat()
        .args(["--repo", &repo, "--password-file"])
        .arg(&pwf)
        .args(["repo", "key", "remove", &old, "--json"]))));
    conforms_to_cli_schema("repo-key-remove.schema.json", &removed);
    assert_eq!(removed["removed"], old.as_str());
    // LIFEBOAT_PASSWORD_FILE is --password-file's variable; the flag wins over it.
    ok(run(lifeboat().env("LIFEBOAT_PASSWORD_FILE", &pwf).args([
        "--repo",
        &repo,
        "snapshots",
    ])));
    let r = run(lifeboat()
        .env("LIFEBOAT_PASSWORD_FILE", &pwf)
        .args(["--repo", &repo, "--password-file"])
        .arg(d.path().join("no-such-file"))
        .arg("snapshots"));
    assert!(r.stderr.contains("no-such-file"), "{}", r.stderr);
    let r = run(with_repo(&repo).arg("snapshots"));
    assert!(
        r.stderr.contains("password does not open"),
        "old password is gone: {}",
        r.stderr
    );
}

#[test]
fn dead_s3_endpoint_gives_one_clear_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = run(lifeboat()
        .env("LIFEBOAT_PASSWORD", "pw")
        .env("AWS_ENDPOINT_URL_S3", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .env("AWS_REGION", "us-east-1")
        .args([
            "--repo",
            "s3://bucket/prefix",
            "--timeout",
            "2",
            "snapshots",
        ]));
    assert_eq!(r.code, 3, "transient failure: {}", r.stderr);
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("config") && last.contains("transient") && last.contains("unreachable"),
        "{}",
        r.stderr
    );
    // The cause once, not the SDK's chain around it.
    assert_eq!(last.matches("refused").count(), 1, "{last}");
}

fn kill_after(cmd: &mut Command, after: Duration) {
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(after);
    // SIGKILL: no cleanup of any kind.
    let _ = child.kill();
    let _ = child.wait();
}

fn killed_backups_leave_a_clean_repository(
    repo: &str,
    envs: &[(&'static str, String)],
    dir: &Path,
) {
    let src = dir.join("v.img");
    generate_image(&src, 48 << 20, 31).unwrap();
    let cmd = |args: &[&str]| {
        let mut c = with_repo(repo);
        c.envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .args(args);
        c
    };
    ok(run(&mut cmd(&[
        "repo",
        "init",
        "--insecure-fast-kdf",
        "--pack-size-mib",
        "1",
    ])));
    ok(run(cmd(&["volume", "backup", "--name", "v"]).arg(&src)));
    let original = dir.join("orig.img");
    std::fs::copy(&src, &original).unwrap();
    mutate(&src, 0.5, 1 << 20, 2).unwrap();
    for ms in [30, 120, 250, 500] {
        kill_after(
            cmd(&["volume", "backup", "--name", "v"]).arg(&src),
            Duration::from_millis(ms),
        );
        let r = run(&mut cmd(&["repo", "check", "--read-data"]));
        assert_eq!(r.code, 0, "killed after {ms} ms: {}{}", r.stdout, r.stderr);
    }
    let out = dir.join("first.img");
    let list = json(&ok(run(&mut cmd(&["snapshots", "--json"]))));
    let first = list[0]["id"].as_str().unwrap().to_string();
    ok(run(cmd(&["volume", "restore", &first]).arg(&out)));
    assert!(
        same(&original, &out),
        "the earlier snapshot restores bit-identical"
    );
    ok(run(cmd(&["volume", "backup", "--name", "v"]).arg(&src)));
    let out2 = dir.join("latest.img");
    ok(run(cmd(&["volume", "restore", "v:latest"]).arg(&out2)));
    assert!(same(&src, &out2));
}

#[test]
fn sigkilled_backups_local() {
    let d = tmp();
    killed_backups_leave_a_clean_repository(
        &d.path().join("repo").display().to_string(),
        &[],
        d.path(),
    );
}

#[test]
fn sigkilled_backups_s3() {
    let g = garage();
    let d = tmp();
    let url = format!("s3://{}/{}", g.bucket, g.unique_prefix());
    killed_backups_leave_a_clean_repository(&url, &g.env(), d.path());
}

#[test]
fn demo_runs_end_to_end() {
    let d = tmp();
    let dir = d.path().join("demo");
    let r = ok(run(lifeboat()
        .args(["demo", "--size-mib", "16", "--dir"])
        .arg(&dir)));
    assert!(
        r.stdout.contains("bit-identical") && r.stdout.contains("no damage"),
        "{}",
        r.stdout
    );
    let r = run(lifeboat()
        .args(["demo", "--size-mib", "16", "--dir"])
        .arg(&dir));
    assert_eq!(r.code, 1, "a used scratch directory is refused");
}

/// A failing `--json` command gives one JSON document on stdout: the error object when it
/// failed before its result (the human line still on stderr), its result otherwise.
#[test]
fn json_failures_print_an_error_object_on_stdout() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();
    let r = run(with_repo(&repo).args(["snapshots", "--json"]));
    assert_eq!(r.code, 1);
    let v = json(&r);
    let e = &v["error"];
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no lifeboat repository"),
        "{v}"
    );
    assert_eq!(e["exit_code"], 1);
    assert_eq!(e["retryable"], false);
    assert!(
        r.stderr.contains("error: no lifeboat repository"),
        "{}",
        r.stderr
    );

    // A command line clap rejects: exit 2, and still JSON.
    let r = run(with_repo(&repo).args(["volume", "backup", "--json", "--no-such-flag"]));
    assert_eq!(r.code, 2);
    assert_eq!(json(&r)["error"]["exit_code"], 2);

    // A command that gave its result before failing: that result is the one document.
    init(&repo);
    std::fs::create_dir_all(Path::new(&repo).join("locks")).unwrap();
    std::fs::write(Path::new(&repo).join("locks/junk"), b"junk").unwrap();
    let r = run(with_repo(&repo).args(["repo", "check", "--json"]));
    assert_eq!(r.code, 4);
    let v = json(&r);
    conforms_to_cli_schema("repo-check.schema.json", &v);
    assert_eq!(v["errors"].as_array().unwrap().len(), 1, "{v}");
}

// ----- exit codes and messages as shells and scripts expect them ---------------------------

/// `lifeboat … | head -1`: a closed stdout ends the process quietly (SIGPIPE, as `cat`
/// does), never a panic.
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let d = tmp();
    let repo = d.path().join("repo");
    let repo = repo.to_str().unwrap();
    init(repo);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = with_repo(repo)
        .arg("snapshots")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// Logs carry no ANSI colour codes when stderr is not a terminal (and none with NO_COLOR).
#[test]
fn logs_are_plain_text_off_a_terminal() {
    let d = tmp();
    let repo = d.path().join("repo");
    let r = ok(run(lifeboat()
        .env("LIFEBOAT_LOG", "info")
        .env("LIFEBOAT_PASSWORD", "pw")
        .args(["--no-cache", "--repo"])
        .arg(&repo)
        .args(["repo", "init", "--insecure-fast-kdf"])));
    assert!(
        r.stderr.contains("INFO"),
        "no log line to look at: {}",
        r.stderr
    );
    assert!(!r.stderr.contains('\u{1b}'), "{:?}", r.stderr);
}

/// An S3 environment without credentials: exit 2 (configuration), the fix named, no
/// retries, and none of the SDK's own warnings at the default verbosity.
#[test]
fn missing_s3_credentials_are_a_configuration_error_naming_the_fix() {
    let d = tmp();
    let r = run(lifeboat()
        .env_remove("LIFEBOAT_LOG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env("HOME", d.path())
        .env("AWS_CONFIG_FILE", d.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", d.path().join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .env("LIFEBOAT_PASSWORD", "pw")
        .args(["--repo", "s3://bucket/prefix", "snapshots"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("no S3 credentials") && r.stderr.contains("AWS_ACCESS_KEY_ID"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("retrying"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}

/// Credentials the server refuses: exit 2, said as such, the fix named.
#[test]
fn rejected_s3_credentials_are_a_configuration_error() {
    let g = garage();
    let url = format!("s3://{}/{}", g.bucket, g.unique_prefix());
    let mut cmd = lifeboat();
    for (k, v) in g.env() {
        cmd.env(k, v);
    }
    let r = run(cmd
        .env("AWS_ACCESS_KEY_ID", "GKnotakey0000000000000000")
        .env("LIFEBOAT_PASSWORD", "pw")
        .args(["--repo", &url, "snapshots"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("rejected the credentials") && r.stderr.contains("AWS_SECRET_ACCESS_KEY"),
        "{}",
        r.stderr
    );
}

/// What the command line lacks is bad usage: exit 2.
#[test]
fn a_missing_repository_or_password_is_bad_usage() {
    let d = tmp();
    let r = run(lifeboat().args(["snapshots"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--repo"), "{}", r.stderr);
    let r = run(lifeboat()
        .arg("--repo")
        .arg(d.path().join("r"))
        .arg("snapshots"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("LIFEBOAT_PASSWORD"), "{}", r.stderr);
}

/// Ctrl-C during a restore into a new file: exit 130 and no `.lifeboat-partial` left; a
/// restore the signal came too late for is complete and identical.
#[test]
fn ctrl_c_exits_130_and_leaves_no_partial_file() {
    use std::os::unix::process::ExitStatusExt;
    let d = tmp();
    let repo = d.path().join("repo");
    let repo = repo.to_str().unwrap();
    init(repo);
    let src = d.path().join("v.img");
    generate_image(&src, 96 << 20, 3).unwrap();
    ok(run(with_repo(repo)
        .args(["volume", "backup", "--name", "v"])
        .arg(&src)));
    let mut interrupted = 0;
    for (i, ms) in [20u64, 40, 70, 110, 160, 250, 400].into_iter().enumerate() {
        let target = d.path().join(format!("out-{i}.img"));
        let child = with_repo(repo)
            .args(["volume", "restore", "v:latest"])
            .arg(&target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let partial = d.path().join(format!("out-{i}.img.lifeboat-partial"));
        assert!(
            !partial.exists(),
            "after {ms} ms: a partial file is left; {stderr}"
        );
        match out.status.code() {
            Some(0) => assert!(same(&src, &target), "after {ms} ms"),
            Some(130) => {
                interrupted += 1;
                assert!(!target.exists(), "after {ms} ms");
                assert!(stderr.contains("interrupted"), "{stderr}");
            }
            // Before lifeboat's handler was in place: the default action.
            None if out.status.signal() == Some(libc::SIGINT) => {
                assert!(!target.exists(), "after {ms} ms")
            }
            other => panic!("after {ms} ms: exit {other:?}: {stderr}"),
        }
    }
    assert!(
        interrupted > 0,
        "no restore was interrupted: make the volume bigger"
    );
}

// ----- help that teaches ----------------------------------------------------------------

/// Every visible command of the tree, with its path (`lifeboat backup create`).
fn commands() -> Vec<(String, clap::Command)> {
    use clap::CommandFactory;
    fn walk(path: String, c: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), c.clone()));
        for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            if s.get_name() != "help" {
                walk(format!("{path} {}", s.get_name()), s, out);
            }
        }
    }
    let mut cmd = lifeboat::cli::Cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk("lifeboat".into(), &cmd, &mut out);
    out
}

#[test]
fn every_command_and_argument_has_help() {
    let mut missing = Vec::new();
    for (path, c) in commands() {
        if c.get_about().is_none() && path != "lifeboat" {
            missing.push(format!("{path}: no about"));
        }
        for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = a.get_id().as_str();
            if ["help", "version"].contains(&id) {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path}: {id}"));
            }
        }
    }
    assert!(missing.is_empty(), "without help:\n{}", missing.join("\n"));
}

/// Global options have their own section of every command's help, after the command's own.
#[test]
fn global_options_are_a_section_of_their_own() {
    for (path, c) in commands() {
        for a in c.get_arguments().filter(|a| a.is_global_set()) {
            assert_eq!(
                a.get_help_heading(),
                Some(lifeboat::cli::GLOBAL_HEADING),
                "{path}: --{}",
                a.get_id()
            );
        }
    }
    let r = ok(run(lifeboat().args(["backup", "create", "--help"])));
    let own = r.stdout.find("--cluster-dir").expect("own option listed");
    let heading = r.stdout.find("Global options:").expect("a global section");
    let repo = r.stdout.find("--repo <URL>").expect("--repo listed");
    assert!(own < heading && heading < repo, "{}", r.stdout);
}

/// No option shows an empty default (`[default: ""]`), and every command's help ends with an
/// example of it.
#[test]
fn help_shows_no_empty_defaults_and_an_example_per_command() {
    for (path, mut c) in commands() {
        let help = c.render_long_help().to_string();
        assert!(
            !help.contains("[default: ]") && !help.contains("[default: \"\"]"),
            "{path}:\n{help}"
        );
        if path == "lifeboat" {
            continue;
        }
        let after = c
            .get_after_help()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(
            after.starts_with("Example") && after.contains(&path),
            "{path}: no example of itself in its help: {after:?}"
        );
    }
}

#[test]
fn completion_scripts_for_every_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef lifeboat"),
        ("fish", "complete -c lifeboat"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[lifeboat]"),
    ] {
        let r = ok(run(lifeboat().args(["completion", shell])));
        assert!(r.stdout.contains(marker), "{shell}: {}", r.stdout);
        // Subcommands and their options are completed too.
        assert!(
            r.stdout.contains("include-namespaces") && r.stdout.contains("from-backup"),
            "{shell}"
        );
    }
    let r = run(lifeboat().args(["completion", "tcsh"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("bash") && r.stderr.contains("zsh"),
        "{}",
        r.stderr
    );
}

#[test]
fn version_names_the_crate_the_commit_and_the_format() {
    let v = json(&ok(run(lifeboat().args(["version", "--json"]))));
    conforms_to_cli_schema("version.schema.json", &v);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["format_version"], lifeboat::format::FORMAT_VERSION);
    let commit = v["commit"].as_str().unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
    assert_eq!(commit, lifeboat::cli::GIT_COMMIT);
    // Built from a git checkout (this one): its commit.
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"]).map(std::path::PathBuf::from);
    if top.and_then(|t| t.canonicalize().ok()) == Path::new(dir).canonicalize().ok() {
        assert_eq!(
            Some(commit.to_string()),
            git(&["rev-parse", "--short=12", "HEAD"])
        );
    }
    let human = ok(run(lifeboat().arg("version")));
    assert!(
        human.stdout.contains(env!("CARGO_PKG_VERSION"))
            && human.stdout.contains(commit)
            && human.stdout.contains("repository format: 1"),
        "{}",
        human.stdout
    );
    let short = ok(run(lifeboat().arg("--version")));
    assert!(short.stdout.contains(commit), "{}", short.stdout);
}

// ----- velero-shaped filters ------------------------------------------------------------

fn prod() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/clusters/prod")
}

/// The namespaced objects of a backup, as `kind/namespace/name`, sorted.
fn namespaced_objects(repo: &str, backup: &str) -> Vec<String> {
    let v = json(&ok(run(
        with_repo(repo).args(["backup", "describe", backup, "--json"])
    )));
    let mut out: Vec<String> = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["namespace"].is_string())
        .map(|o| {
            format!(
                "{}/{}/{}",
                o["kind"].as_str().unwrap(),
                o["namespace"].as_str().unwrap(),
                o["name"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

fn kinds(objects: &[String]) -> Vec<&str> {
    let mut k: Vec<&str> = objects
        .iter()
        .map(|o| o.split('/').next().unwrap())
        .collect();
    k.dedup();
    k
}

#[test]
fn backup_filters_take_resource_names_selectors_and_namespace_patterns() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();
    init(&repo);
    let create = |name: &str, args: &[&str]| {
        let mut c = with_repo(&repo);
        c.args([
            "backup",
            "create",
            name,
            "--include-volumes=false",
            "--cluster-dir",
        ])
        .arg(prod())
        .args(args);
        run(&mut c)
    };
    // Resource names as velero takes them: plural, plural.group, kind; excludes win.
    ok(create(
        "types",
        &[
            "--include-namespaces",
            "p?",
            "--include-resources",
            "deployments.apps,ConfigMap,secrets",
            "--exclude-resources",
            "secrets",
        ],
    ));
    let objs = namespaced_objects(&repo, "types");
    assert_eq!(kinds(&objs), ["ConfigMap", "Deployment"], "{objs:?}");
    let v = json(&ok(run(
        with_repo(&repo).args(["backup", "describe", "types", "--json"])
    )));
    assert_eq!(v["namespaces"], serde_json::json!(["pg"]));
    // Custom resources by their CRD's plural.
    ok(create(
        "crs",
        &["-n", "pg", "--include-resources", "postgresclusters"],
    ));
    assert_eq!(
        kinds(&namespaced_objects(&repo, "crs")),
        ["PostgresCluster"]
    );
    // The whole selector grammar.
    ok(create(
        "labels",
        &[
            "-n",
            "pg",
            "-l",
            "app in (postgres, other),pod-template-hash notin (zzz)",
        ],
    ));
    let objs = namespaced_objects(&repo, "labels");
    assert!(
        objs.contains(&"Deployment/pg/postgres".to_string())
            && objs.iter().all(|o| !o.starts_with("ConfigMap/")),
        "{objs:?}"
    );
    ok(create(
        "no-pods",
        &["-n", "pg", "-l", "!pod-template-hash,app"],
    ));
    let objs = namespaced_objects(&repo, "no-pods");
    assert!(objs.iter().all(|o| !o.starts_with("Pod/")), "{objs:?}");
    // Every namespace but one; the old flag name still works.
    ok(create(
        "all-but",
        &[
            "--include-namespaces",
            "*",
            "--exclude-namespaces",
            "cass*",
            "--exclude-resource-types",
            "Pod",
        ],
    ));
    let objs = namespaced_objects(&repo, "all-but");
    assert!(
        objs.iter()
            .all(|o| o.contains("/pg/") && !o.starts_with("Pod/")),
        "{objs:?}"
    );
    // Single objects moved to --include-objects.
    ok(create(
        "one",
        &["-n", "pg", "--include-objects", "deployment/pg/postgres"],
    ));
    assert_eq!(namespaced_objects(&repo, "one"), ["Deployment/pg/postgres"]);

    for (args, needles) in [
        (
            vec!["-n", "pg", "--include-resources", "gizmos"],
            vec!["`gizmos`", "deployments.apps"],
        ),
        (
            vec!["-n", "pg", "--include-resources", "deployment/pg/postgres"],
            vec!["--include-objects"],
        ),
        (
            vec!["-n", "pg", "-l", "app in (a"],
            vec!["--selector", "`app in (a`"],
        ),
        (
            vec!["-n", "pg", "-l", "app within (a)"],
            vec!["`app within (a)`", "key in ("],
        ),
        (
            vec!["--include-namespaces", "nope-*"],
            vec!["`nope-*`", "cassandra, pg"],
        ),
        (
            vec!["-n", "pg", "--exclude-namespaces", "p*"],
            vec!["no namespace left"],
        ),
    ] {
        let r = create("bad", &args);
        assert_ne!(r.code, 0, "{args:?}");
        for n in needles {
            assert!(r.stderr.contains(n), "{args:?}: {n}: {}", r.stderr);
        }
    }
    // Neither -n nor a pattern: bad usage.
    let r = create("bad", &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn restore_filters_take_resource_names_and_selectors() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();
    init(&repo);
    ok(run(with_repo(&repo)
        .args([
            "backup",
            "create",
            "b",
            "-n",
            "pg",
            "--include-volumes=false",
            "--cluster-dir",
        ])
        .arg(prod())));
    let planned = |args: &[&str]| -> Vec<String> {
        let v = json(&ok(run(with_repo(&repo)
            .args([
                "restore",
                "create",
                "--from-backup",
                "b",
                "--dry-run",
                "--json",
            ])
            .args(args))));
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["skipped"].is_null() && p["target"]["namespace"].is_string())
            .map(|p| p["target"]["kind"].as_str().unwrap().to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    };
    assert_eq!(
        planned(&["--include-resources", "configmaps,services"]),
        ["ConfigMap", "Service"]
    );
    let all = planned(&[]);
    let without = planned(&["--exclude-resources", "Secret,deployments.apps"]);
    assert!(
        all.contains(&"Secret".to_string()) && !without.contains(&"Secret".to_string()),
        "{without:?}"
    );
    assert!(!without.contains(&"Deployment".to_string()), "{without:?}");
    assert_eq!(
        planned(&[
            "-l",
            "app in (postgres)",
            "--include-resources",
            "deployments"
        ]),
        ["Deployment"]
    );
}

// ----- passwords from the terminal --------------------------------------------------------

/// Runs `lifeboat ARGS` on a pseudo-terminal (util-linux `script`), typing `lines` one by
/// one; None when `script` is not installed.
fn on_a_terminal(args: &str, lines: &[&str]) -> Option<crate::support::Run> {
    use std::io::Write;
    let script = ["/usr/bin/script", "/bin/script"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let bin = env!("CARGO_BIN_EXE_lifeboat");
    let mut child = Command::new(script)
        .args(["-qec", &format!("{bin} --no-cache {args}"), "/dev/null"])
        .env_remove("LIFEBOAT_PASSWORD")
        .env_remove("LIFEBOAT_PASSWORD_FILE")
        .env_remove("LIFEBOAT_REPOSITORY")
        .env("LIFEBOAT_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        std::thread::sleep(Duration::from_millis(700));
        stdin.write_all(format!("{l}\n").as_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(700));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    Some(crate::support::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// No password given and a terminal: it is asked for, not echoed (twice for a new
/// repository); off a terminal the command fails at once naming the fix.
#[test]
fn a_password_is_asked_for_on_a_terminal() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();
    let Some(r) = on_a_terminal(
        &format!("--repo {repo} repo init --insecure-fast-kdf"),
        &["typed secret", "typed secret"],
    ) else {
        eprintln!("no `script` here: the terminal prompt is not tested");
        return;
    };
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("repository password again"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("typed secret"), "echoed: {}", r.stdout);
    // The typed password is the repository's.
    let opened = run(lifeboat().env("LIFEBOAT_PASSWORD", "typed secret").args([
        "--no-cache",
        "--repo",
        &repo,
        "snapshots",
    ]));
    assert_eq!(opened.code, 0, "{}", opened.stderr);
    let r = on_a_terminal(&format!("--repo {repo} snapshots"), &["typed secret"]).unwrap();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("no snapshots"), "{}", r.stdout);
    let r = on_a_terminal(&format!("--repo {repo} snapshots"), &["wrong"]).unwrap();
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("does not open"), "{}", r.stdout);
    // Two different answers for a new repository: refused, nothing created.
    let other = d.path().join("other").display().to_string();
    let r = on_a_terminal(
        &format!("--repo {other} repo init --insecure-fast-kdf"),
        &["a", "b"],
    )
    .unwrap();
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stdout.contains("differ"), "{}", r.stdout);
    assert!(!Path::new(&other).join("config").exists());
    // Off a terminal (stdin is not one): no prompt, the fix named.
    let r = run(lifeboat().args(["--repo", &repo, "snapshots"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--password-file"), "{}", r.stderr);
}

#[test]
fn backup_list_shows_status_and_size() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();
    init(&repo);
    ok(run(with_repo(&repo)
        .args(["backup", "create", "pg-1", "-n", "pg", "--cluster-dir"])
        .arg(prod())));
    let list = json(&ok(
        run(with_repo(&repo).args(["backup", "list", "--json"])),
    ));
    let row = &list[0];
    assert_eq!(row["status"], "complete", "{row}");
    let b = json(&ok(run(
        with_repo(&repo).args(["backup", "describe", "pg-1", "--json"])
    )));
    let sum = |k: &str| -> u64 {
        b[k].as_array()
            .unwrap()
            .iter()
            .map(|o| o["size_bytes"].as_u64().unwrap())
            .sum()
    };
    assert!(sum("volumes") > 0, "the fixture has volume data: {b}");
    assert_eq!(
        row["size_bytes"].as_u64().unwrap(),
        sum("objects") + sum("volumes")
    );
    assert!(is_ms_utc(row["started_at"].as_str().unwrap()), "{row}");
    let took = row["duration_seconds"].as_f64().unwrap();
    assert!(took > 0.0 && took < 600.0, "{row}");
    assert_eq!(b["duration_seconds"], row["duration_seconds"]);
    assert_eq!(b["size_bytes"], row["size_bytes"]);
    assert_eq!(b["started_at"], row["started_at"]);
    conforms_to_cli_schema("backup-describe.schema.json", &b);
    assert!(
        b["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["snapshot_id"].as_str().unwrap().len() == 64),
        "{b}"
    );
    let human = ok(run(with_repo(&repo).args(["backup", "list"])));
    let mut lines = human.stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("STATUS") && header.contains("SIZE") && header.contains("DURATION"),
        "{header}"
    );
    let line = lines.next().unwrap();
    assert!(
        line.contains("pg-1")
            && line.contains("complete")
            && line.contains(&lifeboat::cli::human(row["size_bytes"].as_u64().unwrap())),
        "{line}"
    );
    conforms_to_cli_schema("backup-list.schema.json", &list);
}

/// build.rs outside a git checkout (a source tarball) gives "unknown", and inside another
/// repository (a tarball unpacked in some checkout) does not take that repository's commit.
#[test]
fn the_build_script_works_without_git() {
    let d = tmp();
    let exe = d.path().join("build-script");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--edition", "2021", "-o"])
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("build.rs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tarball = d.path().join("lifeboat-0.1.0");
    std::fs::create_dir_all(&tarball).unwrap();
    let other = d.path().join("checkout");
    std::fs::create_dir_all(other.join("vendor/lifeboat")).unwrap();
    let git_init = Command::new("git")
        .arg("init")
        .arg("-q")
        .arg(&other)
        .status();
    for (dir, git) in [
        (tarball, true),
        (other.join("vendor/lifeboat"), git_init.is_ok()),
    ] {
        if !git {
            continue;
        }
        let r = Command::new(&exe)
            .env("CARGO_MANIFEST_DIR", &dir)
            .env_remove("LIFEBOAT_GIT_COMMIT")
            .output()
            .unwrap();
        assert!(r.status.success());
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(
            stdout.contains("cargo:rustc-env=LIFEBOAT_GIT_COMMIT=unknown"),
            "{}: {stdout}",
            dir.display()
        );
    }
    // A packager's own value wins.
    let r = Command::new(&exe)
        .env("CARGO_MANIFEST_DIR", d.path())
        .env("LIFEBOAT_GIT_COMMIT", "0123456789ab")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&r.stdout).contains("LIFEBOAT_GIT_COMMIT=0123456789ab"));
}

/// One flipped byte is one mismatching block: every block is counted (511 of 512 match) and
/// the mismatch's offset is listed; a difference exits 4, as the README says.
#[test]
fn volume_verify_counts_every_block_and_lists_the_first_mismatches() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();
    let src = d.path().join("v.img");
    generate_image(&src, 32 << 20, 5).unwrap();
    init(&repo);
    ok(run(with_repo(&repo)
        .args(["volume", "backup", "--name", "v"])
        .arg(&src)));
    let v = json(&ok(run(with_repo(&repo)
        .args(["volume", "verify", "v:latest", "--json"])
        .arg(&src))));
    assert_eq!(v["verified"], true);
    assert_eq!(v["blocks_verified"], 512);
    assert_eq!(v["blocks_mismatched"], 0);

    let mut data = std::fs::read(&src).unwrap();
    let byte = 100 * 65536 + 12345;
    data[byte] ^= 0xFF;
    std::fs::write(&src, data).unwrap();
    let r = run(with_repo(&repo)
        .args(["volume", "verify", "v:latest"])
        .arg(&src));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stdout.contains("511 of 512 blocks match")
            && r.stdout.contains("1 block(s) mismatch")
            && r.stdout.contains(&format!("{} (block 100)", 100 * 65536)),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("1 of 512 blocks differ"), "{}", r.stderr);
    let r = run(with_repo(&repo)
        .args(["volume", "verify", "v:latest", "--json"])
        .arg(&src));
    assert_eq!(r.code, 4);
    let v = json(&r);
    assert_eq!(v["verified"], false);
    assert_eq!(v["size_matches"], true);
    assert_eq!(v["blocks_verified"], 511);
    assert_eq!(v["blocks_mismatched"], 1);
    assert_eq!(
        v["first_mismatches"],
        serde_json::json!([{"block": 100, "offset_bytes": 100 * 65536}])
    );
}

/// `schema/cli/*.schema.json` are the output structs' schemas, byte for byte: a change of an
/// output changes its schema in the same commit. `LIFEBOAT_WRITE_SCHEMAS=1` writes them.
#[test]
fn output_schemas_are_the_checked_in_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/cli");
    for (file, text) in lifeboat::cli::output_schemas() {
        let path = dir.join(file);
        if std::env::var_os("LIFEBOAT_WRITE_SCHEMAS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == text,
            "{} differs from the output struct's schema: run `LIFEBOAT_WRITE_SCHEMAS=1 cargo test --test it cli::output_schemas` and commit it",
            path.display()
        );
    }
}

/// schema/cli/README.md names the schema of every command's `--json` output, and every schema
/// file it links is generated from the code (none stale).
#[test]
fn every_commands_json_output_has_a_schema_named_in_the_readme() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/cli");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let generated: Vec<&str> = lifeboat::cli::output_schemas()
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    for f in &generated {
        assert!(
            readme.contains(&format!("]({f})")),
            "README.md links no {f}"
        );
    }
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "README.md" || generated.contains(&name.as_str()),
            "schema/cli/{name} is generated by nothing (a stale file)"
        );
    }
    // Commands that print no JSON document: daemons, scripts, files.
    const NO_DOCUMENT: &[&str] = &["server", "demo", "completion", "controller", "crds"];
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    let mut missing = Vec::new();
    for (path, c) in commands() {
        let Some(path) = path.strip_prefix("lifeboat ") else {
            continue;
        };
        let runs_itself = c.get_subcommands().next().is_none() || path == "standby";
        if !runs_itself || NO_DOCUMENT.contains(&path) {
            continue;
        }
        if !rows.iter().any(|r| r.contains(&format!("`{path}`"))) {
            missing.push(path.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "schema/cli/README.md names no schema for: {missing:?}"
    );
}

/// Checks a command's real `--json` output against its checked-in schema.
pub fn conforms_to_cli_schema(file: &str, output: &serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schema/cli")
        .join(file);
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = v.iter_errors(output).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{file}: {errors:?}\n{output:#}");
}

/// Real output of `snapshots`, `volume backup|restore|verify`, `prune`, a failure and the
/// catalog's listings conforms to the schemas, with times in one form (UTC, milliseconds)
/// and sizes in bytes.
#[test]
fn json_outputs_conform_to_their_schemas() {
    let d = tmp();
    let repo = d.path().join("repo").display().to_string();
    let src = d.path().join("v.img");
    // 1 MiB of data, no holes (the demo generator makes a 1 MiB image of one region, which
    // may be a hole: then nothing is read, fetched or written).
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1)
        .collect();
    std::fs::write(&src, data).unwrap();
    let created = json(&ok(run(with_repo(&repo).args([
        "repo",
        "init",
        "--json",
        "--insecure-fast-kdf",
        "--chunk-size-kib",
        "64",
        "--pack-size-mib",
        "1",
    ]))));
    conforms_to_cli_schema("repo-init.schema.json", &created);
    assert_eq!(created["chunk_size_bytes"], 64 << 10, "{created}");
    assert!(
        is_ms_utc(created["created_at"].as_str().unwrap()),
        "{created}"
    );
    let mut backups = Vec::new();
    for _ in 0..2 {
        backups.push(json(&ok(run(with_repo(&repo)
            .args(["volume", "backup", "--json", "--name", "v"])
            .arg(&src)))));
    }
    for b in &backups {
        conforms_to_cli_schema("volume-backup.schema.json", b);
    }
    assert_eq!(backups[0]["read_bytes"], 1 << 20, "{}", backups[0]);
    assert!(backups[0]["parent_id"].is_null());
    assert_eq!(backups[1]["parent_id"], backups[0]["snapshot_id"]);
    assert_eq!(backups[1]["change_source"], "hash-compare");
    let list = json(&ok(run(with_repo(&repo).args(["snapshots", "--json"]))));
    conforms_to_cli_schema("snapshots.schema.json", &list);
    assert!(is_ms_utc(list[0]["started_at"].as_str().unwrap()), "{list}");
    assert_eq!(list[0]["size_bytes"], 1 << 20);
    assert_eq!(list[1]["change_source"], backups[1]["change_source"]);
    let restored = json(&ok(run(with_repo(&repo)
        .args(["volume", "restore", "v:latest", "--json"])
        .arg(d.path().join("r.img")))));
    conforms_to_cli_schema("volume-restore.schema.json", &restored);
    assert_eq!(restored["size_bytes"], 1 << 20);
    assert!(
        restored["fetched_bytes"].as_u64().unwrap() > 0,
        "{restored}"
    );
    let pruned = json(&ok(run(with_repo(&repo).args([
        "prune",
        "--dry-run",
        "--json",
    ]))));
    conforms_to_cli_schema("prune.schema.json", &pruned);
    assert!(pruned["before_bytes"].as_u64().unwrap() > 0, "{pruned}");
    let v = json(&ok(run(with_repo(&repo)
        .args(["volume", "verify", "v:latest", "--json"])
        .arg(&src))));
    conforms_to_cli_schema("volume-verify.schema.json", &v);
    let r = run(with_repo(&repo)
        .args(["volume", "verify", "nope:latest", "--json"])
        .arg(&src));
    assert_ne!(r.code, 0);
    conforms_to_cli_schema("error.schema.json", &json(&r));
    let state = d.path().join("state");
    let schedules = json(&ok(run(with_repo(&repo)
        .arg("--state-dir")
        .arg(&state)
        .args(["schedule", "list", "--json"]))));
    conforms_to_cli_schema("schedule-list.schema.json", &schedules);
    let runs = json(&ok(run(with_repo(&repo)
        .arg("--state-dir")
        .arg(&state)
        .args(["runs", "--json"]))));
    conforms_to_cli_schema("runs.schema.json", &runs);
}
