//! The fuzz targets of `tests/fuzz/` for a bounded time inside the suite: every seed of the
//! corpus built from `fixtures/`, then random mutations of them (bit and byte flips,
//! interesting numbers, inserts, deletes, truncation, splices across targets). No coverage
//! guidance: that is cargo-fuzz's job, on demand (`tests/fuzz/run.sh SECONDS`); this run
//! keeps every target compiling and catches what the mutations reach on every CI run.
//!
//! `LIFEBOAT_FUZZ_SECS` (default 3) bounds each target; `LIFEBOAT_FUZZ_SEED` replays a run
//! (the seed is printed). A panicking input is written to `target/fuzz-failures/` and named
//! in the failure, ready for `cargo +nightly fuzz run TARGET FILE` in `tests/fuzz/`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "../fuzz/corpus.rs"]
mod corpus;
#[path = "../fuzz/targets.rs"]
mod targets;

const INTERESTING_BYTES: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'[', b':', b'\n', b'-'];
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "65536",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e308",
    "0.5",
];

/// One random mutation of `data`, `other` being a seed of any target to splice from.
fn mutate_once(rng: &mut StdRng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    let at = |rng: &mut StdRng| if len == 0 { 0 } else { rng.gen_range(0..len) };
    match rng.gen_range(0..9) {
        0 if len > 0 => {
            let i = at(rng);
            data[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let i = at(rng);
            data[i] = rng.gen();
        }
        2 if len > 0 => {
            let i = at(rng);
            data[i] = INTERESTING_BYTES[rng.gen_range(0..INTERESTING_BYTES.len())];
        }
        3 => {
            // Replace a run of digits (a JSON or YAML number) with an interesting one.
            let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
            if let Some(&i) = digits.get(rng.gen_range(0..digits.len().max(1))) {
                let end = (i..len).find(|&j| !data[j].is_ascii_digit()).unwrap_or(len);
                let n = INTERESTING_NUMBERS[rng.gen_range(0..INTERESTING_NUMBERS.len())];
                data.splice(i..end, n.bytes());
            }
        }
        4 => {
            let i = at(rng);
            let n = rng.gen_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            data.splice(i..i, bytes);
        }
        5 if len > 0 => {
            let i = at(rng);
            let end = (i + rng.gen_range(1..=64)).min(len);
            data.drain(i..end);
        }
        6 if len > 0 => {
            // Duplicate a range in place (repeated keys, nested documents).
            let i = at(rng);
            let end = (i + rng.gen_range(1..=128)).min(len);
            let copy = data[i..end].to_vec();
            data.splice(end..end, copy);
        }
        7 => data.truncate(at(rng)),
        _ if !other.is_empty() => {
            // Splice: our head, another seed's tail.
            let cut = rng.gen_range(0..other.len());
            data.truncate(at(rng));
            data.extend_from_slice(&other[cut..]);
        }
        _ => {}
    }
}

/// Runs `body` on the seeds of `target`, then on mutations of them until `budget` is spent.
/// Returns the number of inputs run, or the first panicking input.
fn fuzz_target(
    body: targets::Body,
    seeds: &[&[u8]],
    all: &[&[u8]],
    rng: &mut StdRng,
    budget: Duration,
) -> Result<u64, Vec<u8>> {
    let run = |input: &[u8]| catch_unwind(AssertUnwindSafe(|| body(input))).is_ok();
    for s in seeds {
        if !run(s) {
            return Err(s.to_vec());
        }
    }
    let start = Instant::now();
    let mut runs = seeds.len() as u64;
    while start.elapsed() < budget {
        let mut input = if seeds.is_empty() || rng.gen_ratio(1, 16) {
            all[rng.gen_range(0..all.len())].to_vec()
        } else {
            seeds[rng.gen_range(0..seeds.len())].to_vec()
        };
        // Stacked mutations, as AFL's havoc stage: one to eight.
        for _ in 0..(1 << rng.gen_range(0..4)) {
            let other = all[rng.gen_range(0..all.len())];
            mutate_once(rng, &mut input, other);
        }
        if !run(&input) {
            return Err(input);
        }
        runs += 1;
    }
    Ok(runs)
}

fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures")
}

fn seed_and_budget() -> (u64, Duration) {
    let seed = std::env::var("LIFEBOAT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let secs: f64 = std::env::var("LIFEBOAT_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    (seed, Duration::from_secs_f64(secs))
}

#[test]
fn no_parser_of_untrusted_input_panics_on_mutations_of_the_fixtures() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let seeds = corpus::seeds(&fixtures);
    let all: Vec<&[u8]> = seeds.iter().map(|s| s.bytes.as_slice()).collect();
    let (seed, budget) = seed_and_budget();
    eprintln!("fuzz: LIFEBOAT_FUZZ_SEED={seed}, {budget:?} per target");
    let mut failed = Vec::new();
    for (i, (name, body)) in targets::TARGETS.iter().enumerate() {
        let (mine, seed_names): (Vec<&[u8]>, Vec<&str>) = seeds
            .iter()
            .filter(|s| s.target == *name)
            .map(|s| (s.bytes.as_slice(), s.name.as_str()))
            .unzip();
        assert!(!mine.is_empty(), "target `{name}` has no seed in fixtures/");
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
        match fuzz_target(*body, &mine, &all, &mut rng, budget) {
            Ok(runs) => eprintln!(
                "fuzz: {name}: {runs} inputs from seeds {}, no panic",
                seed_names.join(", ")
            ),
            Err(input) => {
                let dir = failures_dir().join(name);
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join(blake3::hash(&input).to_hex().as_str());
                std::fs::write(&file, &input).unwrap();
                failed.push(format!("{name}: {}", file.display()));
            }
        }
    }
    // Every target of the cargo-fuzz project is in the table, and no other.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/fuzz_targets");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let names: Vec<&str> = targets::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        files, names,
        "tests/fuzz/fuzz_targets/ and targets::TARGETS differ"
    );
    assert!(
        failed.is_empty(),
        "inputs that panic (replay: LIFEBOAT_FUZZ_SEED={seed}, or `cargo +nightly fuzz run TARGET FILE` in tests/fuzz):\n{}",
        failed.join("\n")
    );
}

/// The seeds written by hand for objects no fixture repository holds are valid objects of
/// their kind (else their mutations test only the parser's first error).
#[test]
fn the_hand_written_seeds_are_valid_objects() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/objects");
    let record = std::fs::read(dir.join("backup-record.json")).unwrap();
    serde_json::from_slice::<lifeboat::format::AppBackup>(&record).unwrap();
    let lock = std::fs::read(dir.join("lock.json")).unwrap();
    serde_json::from_slice::<lifeboat::format::LockFile>(&lock).unwrap();
}

/// The harness finds what it is there to find: a planted panic on short inputs and one on a
/// flipped byte, both reached from a seed by mutations alone.
#[test]
fn the_bounded_fuzzer_finds_a_planted_panic() {
    fn short(data: &[u8]) {
        assert!(data.len() >= 4, "too short");
    }
    fn flipped(data: &[u8]) {
        assert!(!data.contains(&b'}'), "a brace");
    }
    // A JSON-like seed with no closing brace: `]` (0x5d) is one bit from `}` (0x7d).
    let seed: &[u8] = br#"{"version": 1, "name": "x"]"#;
    let mut rng = StdRng::seed_from_u64(1);
    let budget = Duration::from_secs(10);
    let found = fuzz_target(short, &[seed], &[seed], &mut rng, budget).unwrap_err();
    assert!(found.len() < 4);
    let found = fuzz_target(flipped, &[seed], &[seed], &mut rng, budget).unwrap_err();
    assert!(found.contains(&b'}'));
}
