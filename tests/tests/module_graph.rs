//! No import circles: within each crate of the workspace, the modules that refer to one
//! another (`use crate::..`, `use super::..`, paths in code) form no cycle. A reference
//! from `a::x` to `b::y` is one from subtree `a` to its sibling `b` (so `a::x -> b` and
//! `b -> a::y` is the cycle `a <-> b`); a module's use of its own ancestors or descendants
//! is the module tree itself and not counted; a name a parent re-exports from a child
//! (`pub use child::Name`) counts as a reference to that child.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `a::b::c` module path of a source file under `src`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().to_string())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments, string literals and `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut in_tests = false;
    let mut depth = 0i32;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("#[cfg(test)]") {
            in_tests = true;
            depth = 0;
            continue;
        }
        if in_tests {
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if depth <= 0 && line.contains('}') {
                in_tests = false;
            }
            continue;
        }
        let mut s = String::new();
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                s.push(c);
            }
            prev = c;
        }
        if let Some(i) = s.find("//") {
            s.truncate(i);
        }
        out.push_str(&s);
        out.push('\n');
    }
    out
}

/// Every path starting at `crate::` or `super::` (braces of `use` lists expanded).
fn paths(code: &str) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let boundary =
            i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
        if boundary && (rest.starts_with(b"crate::") || rest.starts_with(b"super::")) {
            let (list, used) = parse_path(rest);
            out.extend(list);
            i += used.max(1);
        } else {
            i += 1;
        }
    }
    out
}

/// Parses `a::b::{c, d::e}` at the start of `s`: the expanded paths and the bytes used.
fn parse_path(b: &[u8]) -> (Vec<Vec<String>>, usize) {
    let mut segs = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i > start {
            segs.push(String::from_utf8_lossy(&b[start..i]).to_string());
        }
        if b[i..].starts_with(b"::") {
            i += 2;
            if b[i..].starts_with(b"{") {
                i += 1;
                let mut all = Vec::new();
                loop {
                    while i < b.len() && (b[i] as char).is_whitespace() {
                        i += 1;
                    }
                    if i >= b.len() || b[i] == b'}' {
                        i += 1;
                        break;
                    }
                    let (sub, used) = parse_path(&b[i..]);
                    for p in sub {
                        let mut full = segs.clone();
                        full.extend(p);
                        all.push(full);
                    }
                    i += used.max(1);
                    while i < b.len() && b[i] != b',' && b[i] != b'}' {
                        i += 1;
                    }
                    if i < b.len() && b[i] == b',' {
                        i += 1;
                    }
                }
                return (all, i);
            }
            continue;
        }
        return (vec![segs], i);
    }
}

#[test]
fn no_module_import_cycles_in_the_workspace() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for krate in ["grammar", "compiler", "runtime"] {
        let src = root.join(krate).join("src");
        let mut fs = Vec::new();
        files(&src, &mut fs);
        let mods: BTreeMap<Vec<String>, String> = fs
            .iter()
            .map(|f| (module_of(&src, f), std::fs::read_to_string(f).unwrap()))
            .collect();
        // names re-exported by a module from one of its children
        let mut reexport: BTreeMap<(Vec<String>, String), Vec<String>> = BTreeMap::new();
        for (m, text) in &mods {
            for line in code(text).lines() {
                let t = line.trim();
                let Some(rest) = t.strip_prefix("pub use ") else {
                    continue;
                };
                let rest = rest.trim_end_matches(';');
                let (list, _) = parse_path(rest.as_bytes());
                for p in list {
                    if p.len() >= 2 && mods.contains_key(&[m.clone(), vec![p[0].clone()]].concat())
                    {
                        let mut child = m.clone();
                        child.push(p[0].clone());
                        reexport.insert((m.clone(), p.last().unwrap().clone()), child);
                    }
                }
            }
        }
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (m, text) in &mods {
            for p in paths(&code(text)) {
                // absolute segments
                let mut abs: Vec<String> = Vec::new();
                let mut segs = p.as_slice();
                if segs.first().is_some_and(|s| s == "crate") {
                    segs = &segs[1..];
                } else {
                    abs = m.clone();
                    while segs.first().is_some_and(|s| s == "super") {
                        abs.pop();
                        segs = &segs[1..];
                    }
                }
                abs.extend(segs.iter().cloned());
                // the longest prefix that is a module, then through a re-export
                let mut target = abs.clone();
                while !target.is_empty() && !mods.contains_key(&target) {
                    target.pop();
                }
                if let Some(next) = abs.get(target.len())
                    && let Some(child) = reexport.get(&(target.clone(), next.clone()))
                {
                    target = child.clone();
                }
                // an edge between two subtrees is one between the siblings that hold them
                // (so `a::x -> b` and `b -> a` is the cycle `a <-> b`); a module's use of
                // its own ancestors or descendants is the tree itself
                let common = m.iter().zip(&target).take_while(|(x, y)| x == y).count();
                if common == m.len() || common == target.len() {
                    continue;
                }
                edges
                    .entry(m[..=common].to_vec())
                    .or_default()
                    .insert(target[..=common].to_vec());
            }
        }
        // depth-first search for a cycle
        fn visit(
            n: &Vec<String>,
            edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
            state: &mut BTreeMap<Vec<String>, u8>,
            stack: &mut Vec<Vec<String>>,
        ) -> Option<Vec<Vec<String>>> {
            match state.get(n) {
                Some(2) => return None,
                Some(1) => {
                    let at = stack.iter().position(|x| x == n).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(n.clone());
                    return Some(c);
                }
                _ => {}
            }
            state.insert(n.clone(), 1);
            stack.push(n.clone());
            for m in edges.get(n).into_iter().flatten() {
                if let Some(c) = visit(m, edges, state, stack) {
                    return Some(c);
                }
            }
            stack.pop();
            state.insert(n.clone(), 2);
            None
        }
        let mut state = BTreeMap::new();
        for n in mods.keys() {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, &edges, &mut state, &mut stack) {
                let names: Vec<String> = c
                    .iter()
                    .map(|m| format!("{krate}::{}", m.join("::")))
                    .collect();
                panic!("import cycle: {}", names.join(" -> "));
            }
        }
        checked += mods.len();
    }
    assert!(checked > 60, "only {checked} modules");
}
