//! Real block devices (loop devices) and a real full filesystem (a small tmpfs). These need
//! root, as CI and the development machines have; without it they fail saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use lifeboat::demo::{generate_image, mutate, Rng};

use crate::support::{init_repo, lb, ok, run, tmp};
use crate::volume::same;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (loop devices, mounts); run the suite as root as CI does"
    );
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device over a file, detached on drop.
struct Loop(String);
impl Loop {
    fn attach(file: &Path) -> Loop {
        Loop(sh("losetup", &["-f", "--show", file.to_str().unwrap()]))
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A tmpfs of a given size, unmounted on drop.
struct Mount(PathBuf);
impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                at.to_str().unwrap(),
            ],
        );
        Mount(at.to_path_buf())
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn backup_from_and_restore_onto_loop_devices() {
    require_root();
    let d = tmp();
    let src_file = d.path().join("src.img");
    generate_image(&src_file, 24 << 20, 41).unwrap();
    let src = Loop::attach(&src_file);
    let repo = init_repo(d.path());
    ok(run(lb(&repo)
        .args(["volume", "backup", "--name", "dev"])
        .arg(src.path())));

    // The target device: same size, full of other data.
    let dst_file = d.path().join("dst.img");
    let mut junk = vec![0u8; 24 << 20];
    Rng::new(5).fill(&mut junk);
    std::fs::write(&dst_file, &junk).unwrap();
    let dst = Loop::attach(&dst_file);
    let r = run(lb(&repo)
        .args(["volume", "restore", "dev:latest"])
        .arg(dst.path()));
    assert_eq!(
        r.code, 1,
        "a device is an existing target: --overwrite needed"
    );
    ok(run(lb(&repo)
        .args(["volume", "restore", "dev:latest", "--overwrite"])
        .arg(dst.path())));
    assert!(same(&src_file, &dst_file), "device restored bit-identical");

    // Incremental from the device, then restore onto the older copy: only differences written.
    mutate(&src_file, 0.02, 64 << 10, 3).unwrap();
    ok(run(lb(&repo)
        .args(["volume", "backup", "--name", "dev"])
        .arg(src.path())));
    let v: serde_json::Value = serde_json::from_str(
        &ok(run(lb(&repo)
            .args(["volume", "restore", "dev:latest", "--overwrite", "--json"])
            .arg(dst.path())))
        .stdout,
    )
    .unwrap();
    assert!(same(&src_file, &dst_file));
    assert!(v["blocks_written"].as_u64().unwrap() <= 8, "{v}");

    // A device smaller than the snapshot is refused before anything is written.
    let small_file = d.path().join("small.img");
    std::fs::write(&small_file, vec![7u8; 1 << 20]).unwrap();
    let small = Loop::attach(&small_file);
    let r = run(lb(&repo)
        .args(["volume", "restore", "dev:latest", "--overwrite"])
        .arg(small.path()));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("larger device"), "{}", r.stderr);
    drop(small);
    assert_eq!(std::fs::read(&small_file).unwrap(), vec![7u8; 1 << 20]);
}

#[test]
fn a_full_disk_is_one_clear_error_and_loses_nothing() {
    require_root();
    let d = tmp();
    let mnt = Mount::tmpfs(&d.path().join("mnt"), "6m");
    let repo = mnt.0.join("repo");
    ok(run(lb(&repo).args([
        "repo",
        "init",
        "--insecure-fast-kdf",
        "--chunk-size-kib",
        "64",
        "--pack-size-mib",
        "1",
    ])));
    let small = d.path().join("small.img");
    generate_image(&small, 2 << 20, 42).unwrap();
    ok(run(lb(&repo)
        .args(["volume", "backup", "--name", "a"])
        .arg(&small)));

    // Incompressible data larger than the space left.
    let big = d.path().join("big.img");
    let mut data = vec![0u8; 16 << 20];
    Rng::new(6).fill(&mut data);
    std::fs::write(&big, &data).unwrap();
    let r = run(lb(&repo)
        .args(["volume", "backup", "--name", "b"])
        .arg(&big));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no space left"), "{}", r.stderr);
    assert_eq!(
        r.stderr.trim().lines().count(),
        1,
        "one message: {}",
        r.stderr
    );

    let check = ok(run(lb(&repo).args(["repo", "check", "--read-data"])));
    assert!(check.stdout.contains("no damage found"), "{}", check.stdout);
    let out = d.path().join("a.img");
    ok(run(lb(&repo)
        .args(["volume", "restore", "a:latest"])
        .arg(&out)));
    assert!(same(&small, &out), "the earlier snapshot is intact");
}

/// A filesystem of `fstype` on a loop-mounted image file, unmounted on drop.
fn filesystem(d: &Path, fstype: &str) -> Mount {
    let image = d.join(format!("{fstype}.fs"));
    std::fs::File::create(&image)
        .unwrap()
        .set_len(320 << 20)
        .unwrap();
    sh(&format!("mkfs.{fstype}"), &["-q", image.to_str().unwrap()]);
    let at = d.join(format!("{fstype}-mnt"));
    std::fs::create_dir_all(&at).unwrap();
    sh(
        "mount",
        &["-o", "loop", image.to_str().unwrap(), at.to_str().unwrap()],
    );
    Mount(at)
}

#[test]
fn group_snapshots_on_xfs_are_reflinks() {
    require_root();
    let d = tmp();
    let m = filesystem(d.path(), "xfs");
    let methods = crate::consistency::markers_in_and_out(&m.0.join("cluster"), d.path());
    assert_eq!(methods, vec!["reflink"; 3]);
}

#[test]
fn group_snapshots_on_ext4_fall_back_to_copies() {
    require_root();
    let d = tmp();
    let m = filesystem(d.path(), "ext4");
    let methods = crate::consistency::markers_in_and_out(&m.0.join("cluster"), d.path());
    assert_eq!(methods, vec!["copy"; 3]);
}
