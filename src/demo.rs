//! Generated volume data for the demo, the tests and the benchmark: takes a size and a seed;
//! gives a deterministic sparse image of mixed content and reproducible changes to it.
//!
//! Each 1 MiB region is a hole (25 %), a copy of an earlier region (15 %), text-like
//! (20 %) or random (40 %): the same mix the peers were measured on.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::volume::diff::ByteRange;

const REGION: u64 = 1 << 20;

/// xorshift64*: fast, deterministic, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "namespace",
    "cassandra",
    "replica",
    "volume",
    "snapshot",
    "the",
    "of",
    "and",
    "backup",
    "restore",
    "cluster",
    "node",
    "pod",
    "INFO",
    "WARN",
    "2026-11-24T10:00:00Z",
    "commit",
    "log",
    "segment",
    "flush",
    "compaction",
    "key",
    "value",
    "row",
    "table",
    "index",
    "select",
    "insert",
    "update",
    "where",
    "id",
    "=",
    "{",
    "}",
    ":",
    "\"",
    "0",
    "1",
    "42",
    "lifeboat",
    "tokens",
    "status",
];

fn text(rng: &mut Rng, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
        let sep: &[u8] = if rng.below(12) == 0 { b"\n" } else { b" " };
        for &b in w.iter().chain(sep) {
            if i < buf.len() {
                buf[i] = b;
                i += 1;
            }
        }
    }
}

/// Writes a new sparse image of `size` bytes at `path`.
pub fn generate_image(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.set_len(size)?;
    let mut rng = Rng::new(seed);
    let regions = size.div_ceil(REGION);
    let mut written: Vec<u64> = Vec::new();
    let mut buf = vec![0u8; REGION as usize];
    for r in 0..regions {
        let off = r * REGION;
        let len = REGION.min(size - off) as usize;
        let class = rng.below(100);
        let buf = &mut buf[..len];
        match class {
            0..=24 => continue, // hole
            25..=39 if !written.is_empty() => {
                let src = written[rng.below(written.len() as u64) as usize];
                f.read_exact_at(buf, src)?;
            }
            25..=59 => text(&mut rng, buf),
            _ => rng.fill(buf),
        }
        f.write_all_at(buf, off)?;
        if len as u64 == REGION {
            written.push(off);
        }
    }
    f.sync_all()
}

/// Overwrites about `fraction` of the image with random data in extents of `extent` bytes at
/// random aligned offsets; returns the changed ranges, sorted (what a CBT source would report).
pub fn mutate(path: &Path, fraction: f64, extent: u64, seed: u64) -> io::Result<Vec<ByteRange>> {
    let f = OpenOptions::new().write(true).read(true).open(path)?;
    let size = f.metadata()?.len();
    let slots = size / extent;
    let count = ((size as f64 * fraction) / extent as f64).ceil() as u64;
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    let mut picked = std::collections::BTreeSet::new();
    while (picked.len() as u64) < count.min(slots) {
        picked.insert(rng.below(slots));
    }
    let mut buf = vec![0u8; extent as usize];
    let mut out = Vec::new();
    for slot in picked {
        rng.fill(&mut buf);
        f.write_all_at(&buf, slot * extent)?;
        out.push(ByteRange {
            offset: slot * extent,
            length: extent,
        });
    }
    f.sync_all()?;
    Ok(out)
}

/// Writes ranges as a changed-ranges JSON file.
pub fn write_ranges(path: &Path, ranges: &[ByteRange]) -> io::Result<()> {
    let v: Vec<serde_json::Value> = ranges
        .iter()
        .map(|r| serde_json::json!({"offset": r.offset, "length": r.length}))
        .collect();
    std::fs::write(path, serde_json::to_vec_pretty(&v)?)
}

/// BLAKE3 of a file's bytes, for comparing a restore with its source.
pub fn file_hash(path: &Path) -> io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(path)?;
    io::copy(&mut f, &mut h)?;
    Ok(h.finalize())
}
