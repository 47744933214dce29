//! The crate's layering, checked on its sources (so a change that breaks it fails CI):
//! - no import cycle among the modules of `src/` (top-level modules, and the parts of `backend/`);
//! - backend code never names `Tensor` or `Var`, and ops never ask which device a tensor lives on;
//! - no file in `src/` is longer than 600 lines;
//! - every `#[target_feature]` set the CPU kernels enable is one the run-time detection checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, with its module path (`backend::cpu::conv` for
/// `src/backend/cpu/conv/mod.rs` and its `tests.rs` alike).
fn sources() -> Vec<(PathBuf, Vec<String>, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap();
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&p).unwrap();
            (p, parts, text)
        })
        .collect()
}

/// The file's code with comments and string literals blanked (so prose and messages do not count).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '/' && b.get(i + 1) == Some(&'/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if b[i] == '/' && b.get(i + 1) == Some(&'*') {
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The node a module path belongs to: the top-level module, or `backend::<part>` for the parts of
/// the backend (`cpu`, `cuda`, `spec`); an item of `backend/mod.rs` itself is `backend`.
fn node(path: &[String]) -> Option<String> {
    match path {
        [] => None,
        [b, part, ..] if b == "backend" && ["cpu", "cuda", "spec"].contains(&part.as_str()) => Some(format!("backend::{part}")),
        [first, ..] => Some(first.clone()),
    }
}

/// The items `lib.rs` re-exports at the crate root, mapped to their modules.
fn root_items(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for stmt in code(lib).split(';') {
        let stmt = stmt.trim();
        let Some(rest) = stmt.strip_prefix("pub use ") else { continue };
        let Some((module, items)) = rest.split_once("::") else { continue };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            map.insert(item.trim().to_string(), module.trim().to_string());
        }
    }
    map
}

/// `c` without its inline `mod tests { … }` blocks (their `super` paths are one level deeper, and test
/// code is not part of the layering).
fn without_inline_tests(c: &str) -> String {
    let mut out = c.to_string();
    while let Some(i) = out.find("mod tests {") {
        let mut depth = 0;
        let mut end = out.len();
        for (j, ch) in out[i..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(i..end, "");
    }
    out
}

/// The module paths a file refers to through `crate::…` and `super::…` (resolved), `use` groups
/// included, and (in a `mod.rs`) through its child modules.
fn references(path: &[String], text: &str) -> Vec<Vec<String>> {
    let c = without_inline_tests(&code(text));
    let mut refs = Vec::new();
    let ident = |s: &str| s.chars().take_while(|ch| ch.is_alphanumeric() || *ch == '_').collect::<String>();
    let push_path = |base: Vec<String>, rest: &str, refs: &mut Vec<Vec<String>>| {
        // rest is what follows `crate::` or `super::` (possibly a `{…}` group).
        let rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && ch == ',') {
                    let first = ident(item.trim().trim_start_matches(['{', ' ']));
                    if !first.is_empty() && first != "self" {
                        let mut p = base.clone();
                        p.push(first);
                        refs.push(p);
                    }
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(ch);
                }
            }
        } else {
            let mut p = base;
            let mut r = rest;
            loop {
                let id = ident(r);
                if id.is_empty() || id == "self" {
                    break;
                }
                p.push(id.clone());
                r = &r[id.len()..];
                match r.strip_prefix("::") {
                    Some(next) => r = next,
                    None => break,
                }
            }
            refs.push(p);
        }
    };
    for (i, _) in c.match_indices("crate::") {
        let before = c[..i].chars().last();
        if before.is_some_and(|ch| ch.is_alphanumeric() || ch == '_' || ch == '$') {
            continue;
        }
        push_path(Vec::new(), &c[i + "crate::".len()..], &mut refs);
    }
    for (i, _) in c.match_indices("super::") {
        let before = c[..i].chars().last();
        if before.is_some_and(|ch| ch.is_alphanumeric() || ch == '_' || ch == ':') {
            continue;
        }
        // `super` of a file `a/b.rs` (module a::b) is `a`; of `a/b/mod.rs` (module a::b) also `a`;
        // successive `super::super::` climb further.
        let mut base: Vec<String> = path.to_vec();
        let mut rest = &c[i..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        push_path(base, rest, &mut refs);
    }
    // `use child::…` in a module file names its own child module.
    for stmt in c.split(';') {
        let stmt = stmt.trim();
        if let Some(rest) =
            stmt.strip_prefix("use ").or_else(|| stmt.strip_prefix("pub(crate) use ")).or_else(|| stmt.strip_prefix("pub use "))
        {
            let first = ident(rest);
            if !first.is_empty() && !["crate", "super", "self", "std", "core", "alloc"].contains(&first.as_str()) {
                let mut p = path.to_vec();
                p.push(first);
                refs.push(p);
            }
        }
    }
    refs
}

/// A cycle of the directed graph, if it has one (depth-first search for a back edge).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let (mut stack, mut done) = (Vec::new(), BTreeSet::new());
    edges.keys().find_map(|n| visit(n, edges, &mut stack, &mut done))
}

#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let g = |pairs: &[(&str, &str)]| {
        let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            e.entry(a.to_string()).or_default().insert(b.to_string());
        }
        e
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    // And the parser sees a `use crate::…` group as edges to each module named.
    let refs = references(
        &["ops".to_string()],
        "use crate::{tensor::Tensor, autodiff::{Var, grad}};\nfn f() { crate::shape::Shape::new(vec![]); }",
    );
    let mods: BTreeSet<String> = refs.iter().filter_map(|r| r.first().cloned()).collect();
    assert_eq!(mods, ["autodiff", "shape", "tensor"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn no_import_cycle_among_the_modules() {
    let files = sources();
    let lib = files.iter().find(|(_, p, _)| p.is_empty()).map(|(_, _, t)| t.clone()).unwrap();
    let roots = root_items(&lib);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, path, text) in &files {
        let Some(from) = node(path) else { continue };
        let _ = file;
        for mut r in references(path, text) {
            // A root item (`crate::Tensor`) belongs to the module lib.rs re-exports it from.
            if let Some(m) = r.first().and_then(|f| roots.get(f)) {
                r = vec![m.clone()];
            }
            if let Some(to) = node(&r) {
                if to != from && files.iter().any(|(_, p, _)| node(p).as_deref() == Some(to.as_str())) {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle among modules: {}\nall edges: {edges:#?}", cycle.join(" → "));
    }
    // The layering the README describes, a few edges spelled out so that the parser is known to work.
    let has = |a: &str, b: &str| edges.get(a).is_some_and(|s| s.contains(b));
    assert!(has("tensor", "backend"), "{edges:#?}");
    assert!(has("ops", "autodiff") && has("autodiff", "tensor"), "{edges:#?}");
    assert!(has("backend::cpu", "backend::spec") && has("backend", "backend::cpu"), "{edges:#?}");
    for leaf in ["dtype", "shape", "device", "error", "mode"] {
        assert!(
            !edges.get(leaf).into_iter().flatten().any(|to| to.starts_with("backend") || to == "autodiff" || to == "tensor"),
            "{leaf} must stay a leaf: {edges:#?}"
        );
    }
}

#[test]
fn backends_never_name_tensors_or_variables_and_ops_never_branch_on_the_device() {
    for (file, path, text) in sources() {
        let c = code(&text);
        let words: BTreeSet<&str> = c.split(|ch: char| !(ch.is_alphanumeric() || ch == '_')).collect();
        if path.first().is_some_and(|p| p == "backend") {
            for w in ["Tensor", "Var", "Tape"] {
                assert!(!words.contains(w), "{} names {w}: backend code works on buffers and shapes only", file.display());
            }
        }
        if path.first().is_some_and(|p| p == "ops") {
            for w in ["is_cuda", "Cuda", "CudaStorage", "CpuStorage"] {
                assert!(!words.contains(w), "{} uses {w}: ops dispatch through the storage layer", file.display());
            }
        }
    }
}

#[test]
fn no_source_file_is_longer_than_600_lines() {
    for (file, _, text) in sources() {
        let n = text.lines().count();
        assert!(n <= 600, "{} has {n} lines; split it", file.display());
    }
}

#[test]
fn every_enabled_target_feature_set_is_one_the_detection_checks() {
    // backend/cpu/mod.rs: `Avx2` = avx2 + fma; `Avx512` = avx512f + avx512vl + avx2 + fma.
    let levels: [BTreeSet<&str>; 2] = [["avx2", "fma"].into(), ["avx512f", "avx512vl", "avx2", "fma"].into()];
    let mut seen = 0;
    for (file, path, text) in sources() {
        if !path.starts_with(&["backend".to_string(), "cpu".to_string()]) {
            continue;
        }
        for (i, _) in text.match_indices("target_feature(enable = \"") {
            let rest = &text[i + "target_feature(enable = \"".len()..];
            let feats: BTreeSet<&str> = rest[..rest.find('"').unwrap()].split(',').collect();
            assert!(
                levels.iter().any(|l| feats.is_subset(l)),
                "{} enables {feats:?}, which no detected level covers (see backend::cpu::detect)",
                file.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "found only {seen} target_feature attributes");
}
