//! Writes the seed corpus (`corpus.rs`) as files, one folder per target, for cargo-fuzz.
//! Usage: `seeds FIXTURES_DIR CORPUS_DIR`.

use std::path::Path;

mod corpus;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (fixtures, out) = (Path::new(&args[1]), Path::new(&args[2]));
    for s in corpus::seeds(fixtures) {
        let dir = out.join(s.target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&s.name), &s.bytes).unwrap();
    }
}
