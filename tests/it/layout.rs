//! The layout is the architecture: these tests read `src/` and hold it to the rules that
//! `src/lib.rs` states. Each layer (a module of `lib.rs`) uses only the layers declared
//! before it, and inside a layer each module uses only its siblings declared before it in
//! the layer's `mod.rs`; so there is no import cycle, and no layer reaches up. No source file
//! holds more than about 1,000 lines of non-test code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The modules a `mod.rs` or `lib.rs` declares, in declaration order.
fn declared(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            let name = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()?;
            // `mod tests { … }` blocks are not modules of the layout.
            rest[name.len()..]
                .trim_start()
                .starts_with(';')
                .then(|| name.to_string())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file, e.g. `src/k8s/csi/site.rs` → `["k8s", "csi", "site"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a file without its `#[cfg(test)]` module and without comments.
fn code_lines(text: &str) -> Vec<&str> {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect()
}

/// `crate::a::b…` paths a file names, as `(a, Some(b))`.
fn crate_paths(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for line in code_lines(text) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let mut it = rest.split("::").map(|s| {
                s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")
                    .to_string()
            });
            let a = it.next().unwrap_or_default();
            let b = it.next().filter(|s| !s.is_empty());
            out.push((a, b));
        }
        // `use crate::{a, b}` names several layers at once.
        if let Some(i) = line.find("crate::{") {
            let inner = &line[i + "crate::{".len()..];
            for part in inner.split(',') {
                let a: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !a.is_empty() {
                    out.push((a, None));
                }
            }
        }
    }
    out
}

#[test]
fn every_layer_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers = declared(&src.join("lib.rs"));
    assert!(layers.len() > 8, "lib.rs declares the layers: {layers:?}");
    let rank: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    // Inside each folder layer, its modules in declaration order.
    let mut inner: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for l in &layers {
        let m = src.join(l).join("mod.rs");
        if m.exists() {
            let mods = declared(&m);
            inner.insert(
                l.clone(),
                mods.into_iter().enumerate().map(|(i, m)| (m, i)).collect(),
            );
        }
    }
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for f in &files {
        let module = module_of(&src, f);
        let Some(top) = module.first() else { continue };
        if top == "main" {
            continue;
        }
        let Some(&own) = rank.get(top.as_str()) else {
            panic!("{} is not a module that lib.rs declares", f.display());
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (a, b) in crate_paths(&text) {
            let Some(&theirs) = rank.get(a.as_str()) else {
                continue; // a crate-level item, not a layer
            };
            if theirs > own {
                violations.push(format!(
                    "{} (layer {top}) uses crate::{a}, a layer above it",
                    f.display()
                ));
            }
            // Inside one layer: a module uses only siblings declared before it.
            if theirs == own {
                if let (Some(order), Some(mine), Some(b)) = (inner.get(top), module.get(1), b) {
                    if let (Some(&i), Some(&j)) = (order.get(mine), order.get(&b)) {
                        if j > i {
                            violations.push(format!(
                                "{} ({top}::{mine}) uses crate::{top}::{b}, declared after it in src/{top}/mod.rs",
                                f.display()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_a_layer_reaching_up() {
    // The rule above must be able to fail: a path to a higher layer is found in code, and a
    // comment or a test module is not code.
    let text = "use crate::standby::x;\n// crate::cli::y\nfn f() { crate::scheduler::catalog::open(); }\n#[cfg(test)]\nmod tests { use crate::cli::z; }\n";
    let found: Vec<String> = crate_paths(text).into_iter().map(|(a, _)| a).collect();
    assert_eq!(found, vec!["standby", "scheduler"]);
    let grouped = crate_paths("use crate::{format, store::Store};");
    assert!(grouped.iter().any(|(a, _)| a == "format"));
    assert!(grouped.iter().any(|(a, _)| a == "store"));
}

#[test]
fn no_source_file_is_longer_than_about_a_thousand_lines_of_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let n = code_lines(&text).len();
            (n > 1050).then(|| format!("{}: {n} lines of non-test code", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these by concern:\n{}",
        long.join("\n")
    );
}
