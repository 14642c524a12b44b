//! Checked-in repositories under `fixtures/repos/`: a good one that this build must still read
//! and restore bit-identical (format stability), and damaged copies that `repo check` must catch,
//! naming the damaged object. `cargo test -- --ignored regenerate_fixture_repositories`
//! rewrites them (only when the format changes on purpose).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat::format::KdfParams;
use lifeboat::repository::{CheckOptions, InitOptions, Repository};
use lifeboat::store::local::LocalStore;
use tokio_util::sync::CancellationToken;

use crate::support::tmp;
use crate::volume::{backup, restore};

const PASSWORD: &[u8] = b"fixture";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/repos")
}

/// The volume the good repository holds: 4 blocks of 64 KiB plus 1000 bytes: text, a hole,
/// a block half zeros, a copy of the first block, and a short tail.
fn fixture_volume(path: &Path) {
    let mut v = Vec::new();
    let text =
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lifeboat-fixture}\n".repeat(1000);
    v.extend_from_slice(&text[..65536]);
    v.extend_from_slice(&[0u8; 65536]);
    let mut half = vec![0u8; 65536];
    lifeboat::demo::Rng::new(7).fill(&mut half[..32768]);
    v.extend_from_slice(&half);
    v.extend_from_slice(&text[..65536]);
    v.extend_from_slice(&text[1..1001]);
    std::fs::write(path, v).unwrap();
}

async fn open(dir: &Path) -> Arc<Repository> {
    Arc::new(
        Repository::open(
            Arc::new(LocalStore::new(dir)),
            PASSWORD,
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display())),
    )
}

#[tokio::test]
async fn the_good_fixture_still_restores_bit_identical() {
    let repo = open(&root().join("good")).await;
    let d = tmp();
    let expected = d.path().join("expected.img");
    fixture_volume(&expected);
    let out = d.path().join("out.img");
    restore(&repo, "fixture:latest", &out).await;
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&expected).unwrap()
    );
    let r = repo.check(&CheckOptions { read_data: true }).await.unwrap();
    assert!(r.ok() && r.warnings.is_empty(), "{r:?}");
}

#[tokio::test]
async fn check_catches_every_damaged_fixture() {
    let mut seen = 0;
    for entry in std::fs::read_dir(root()).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(expect) = std::fs::read_to_string(dir.join("EXPECT")) else {
            continue;
        };
        seen += 1;
        let mut expect = expect.lines();
        let object = expect.next().unwrap().trim().to_string();
        let read_data = expect.next().map(str::trim) == Some("read-data");
        // Work on a copy: the fixture itself stays as checked in.
        let d = tmp();
        copy_dir(&dir, d.path());
        let repo = open(d.path()).await;
        let r = repo.check(&CheckOptions { read_data }).await.unwrap();
        assert!(!r.ok(), "{}: damage not found", dir.display());
        assert!(
            r.errors.iter().any(|e| e.contains(&object)),
            "{}: no error names {object}: {:?}",
            dir.display(),
            r.errors
        );
    }
    assert!(seen >= 4, "damaged fixtures found: {seen}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn first_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    walk(dir, &mut files);
    files.sort();
    files.into_iter().next().unwrap()
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let i = at.min(b.len() - 1);
    b[i] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

fn key_of(repo: &Path, file: &Path) -> String {
    file.strip_prefix(repo)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
#[ignore = "rewrites fixtures/repos; run only when the format changes on purpose"]
async fn regenerate_fixture_repositories() {
    let root = root();
    let _ = std::fs::remove_dir_all(&root);
    let good = root.join("good");
    let opts = InitOptions {
        chunk_size: 64 << 10,
        pack_size: 1 << 20,
        compression_level: 3,
        kdf: KdfParams::INSECURE_FAST,
    };
    let repo = Arc::new(
        Repository::init(
            Arc::new(LocalStore::new(&good)),
            PASSWORD,
            &opts,
            CancellationToken::new(),
        )
        .await
        .unwrap(),
    );
    let d = tmp();
    let img = d.path().join("v.img");
    fixture_volume(&img);
    backup(&repo, "fixture", &img).await;

    let damaged = |name: &str, f: &dyn Fn(&Path) -> (String, bool)| {
        let dir = root.join(name);
        copy_dir(&good, &dir);
        let (object, read_data) = f(&dir);
        std::fs::write(
            dir.join("EXPECT"),
            format!(
                "{object}\n{}\n",
                if read_data { "read-data" } else { "structure" }
            ),
        )
        .unwrap();
    };
    damaged("corrupt-pack", &|dir| {
        let p = first_file(&dir.join("data"));
        flip(&p, 200);
        (key_of(dir, &p), true)
    });
    damaged("missing-pack", &|dir| {
        let p = first_file(&dir.join("data"));
        std::fs::remove_file(&p).unwrap();
        (key_of(dir, &p), false)
    });
    damaged("corrupt-index", &|dir| {
        let p = first_file(&dir.join("index"));
        flip(&p, 60);
        (key_of(dir, &p), false)
    });
    damaged("corrupt-snapshot", &|dir| {
        let p = first_file(&dir.join("snapshots"));
        flip(&p, 40);
        (key_of(dir, &p), false)
    });
    damaged("truncated-pack", &|dir| {
        let p = first_file(&dir.join("data"));
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        (key_of(dir, &p), false)
    });
}
