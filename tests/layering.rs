//! The library crate's modules form layers: each uses only modules below it, so a newcomer can
//! read them bottom-up and change one without the others turning around to call it. This test
//! reads `src/` and fails on any import cycle between the top-level modules (a module's own
//! submodules, and its tests, are its business).
//!
//! The layers today, bottom to top: `clock`, `log`, `startup` → `driver` → `container` → `state`
//! → `node` → `limiter`, `reconcile` → `hooks` → `intercept` → the crate root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules its non-test code names through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| match p.extension() {
            Some(ext) if ext == "rs" => p.file_stem().map(|s| s.to_string_lossy().into_owned()),
            None if p.is_dir() => p.file_name().map(|s| s.to_string_lossy().into_owned()),
            _ => None,
        })
        .filter(|m| m != "lib")
        .collect();
    assert!(modules.len() >= 8, "found the library's modules in {}: {modules:?}", src.display());
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut uses = BTreeSet::new();
        for file in files_of(&src, module) {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in crate_paths(without_tests(&text)) {
                if name != *module && modules.contains(&name) {
                    uses.insert(name);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
    let file = src.join(format!("{module}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.to_string_lossy().ends_with("_tests.rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The text before a file's `#[cfg(test)]` module (by convention, the last thing in a file).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod ").map_or(text, |i| &text[..i])
}

/// `x` for every `crate::x` and every `crate::{x, y::…}` in code (comments left out).
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's top-level items: `a::{b, c}, d` is `a` and `d`.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => out.push(ident(std::mem::take(&mut item).trim())),
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            out.push(ident(item.trim()));
        } else {
            out.push(ident(rest));
        }
    }
    out
}

/// One cycle of `graph`, if it has any.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == m) {
            let mut c = path[start..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_library_modules_form_layers_without_cycles() {
    let graph = imports();
    let listing: Vec<String> = graph.iter().map(|(m, uses)| format!("{m} -> {uses:?}")).collect();
    if let Some(c) = cycle(&graph) {
        panic!("import cycle between the library's modules: {}\n{}", c.join(" -> "), listing.join("\n"));
    }
    // The bottom layer is really at the bottom: the driver knows nothing of hooks or policy.
    assert!(
        graph["driver"].is_empty() || graph["driver"].iter().all(|m| ["clock", "log", "startup"].contains(&m.as_str())),
        "driver uses {:?}",
        graph["driver"]
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(cycle(&g(&[("a", "b"), ("b", "c")])), None);
    assert_eq!(
        cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_paths("use crate::{driver::{self, Real}, hooks};\nlet x = crate::state::state(); // crate::log"),
        vec!["driver", "hooks", "state"]
    );
}
