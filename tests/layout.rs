//! The layer check: the library's top-level modules import only downward, so there is no
//! import cycle among them, and telemetry is a leaf.
//!
//! Run it (it prints the layers and every edge, with the line that makes it):
//!
//! ```text
//! cargo test --release --test layout -- --nocapture
//! ```
//!
//! No compiler plugin and no new dependency: it reads `src/**/*.rs`, blanks comments
//! and literals, follows `mod` declarations to build the module tree, and resolves every
//! path that starts with `crate::`, `super::`, `self::` or the name of a child module
//! (in `use` trees and in code) to the module it names. Test-only code (`#[cfg(test)]`
//! items and the files of `#[cfg(test)] mod x;`) is left out, as `cargo modules` does
//! by default: a unit test may build its input with a lab helper from a layer above
//! without the library depending on it; those edges are printed, not judged.
//! `src/main.rs` is the binary above everything and is not part of the graph.
//!
//! What it asserts: each edge between top-level modules goes from a layer in [`LAYERS`]
//! to a lower one (which rules out cycles), a module missing from the table fails by
//! name, telemetry imports nothing but plain-type leaves, and `engine`'s submodules
//! import each other without a cycle (the sans-IO session core took the
//! driver/forward/store/worker circle apart). A parent module and its own children
//! (`store` and `store/upstream`) count as one node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first; a module may import only from layers below its own. Keep in
/// step with the diagram in `src/lib.rs`.
const LAYERS: &[&[&str]] = &[
    &["demo"],
    &["pki", "load"],
    &["control"],
    &["engine"],
    &["backend", "session"],
    &["config"],
    &["authz"],
    &["tls", "telemetry"],
    &["proto", "secrets", "lab"],
    &["reason"],
];

/// Where an edge was seen, for the failure message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Site {
    file: String,
    line: usize,
}

/// Module-to-module edges, each with the first line that makes it.
type Graph = BTreeMap<String, BTreeMap<String, Site>>;

#[derive(Debug, Default)]
struct Analysis {
    /// Every module of the library, `::`-joined (`""` is the crate root).
    modules: BTreeSet<String>,
    /// Edges between top-level modules, outside test code.
    top: Graph,
    /// Edges between `engine` and its submodules (`engine` itself is the `mod.rs`).
    engine: Graph,
    /// Edges between top-level modules made only by test code.
    test_only: Graph,
}

// ---------------------------------------------------------------------------------------
// Lexing: blank comments, strings and char literals, keep line numbers
// ---------------------------------------------------------------------------------------

fn blank(src: &str) -> Vec<char> {
    let c: Vec<char> = src.chars().collect();
    let mut out = c.clone();
    let mut i = 0;
    let wipe = |out: &mut Vec<char>, a: usize, b: usize| {
        for ch in out.iter_mut().take(b).skip(a) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            let end = (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len());
            wipe(&mut out, i, end);
            i = end;
        } else if c[i] == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            wipe(&mut out, i, j);
            i = j;
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0
                || !is_ident(c[i - 1])
                || (c[i - 1] == 'b' && (i == 1 || !is_ident(c[i - 2]))))
        {
            // r"..." or r#"..."#: no escapes, ends at the quote and as many hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() {
                if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            wipe(&mut out, i, j);
            i = j;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            wipe(&mut out, i, j + 1);
            i = j + 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former
            // closes with a quote within a few characters.
            let j = if next == Some('\\') {
                // The escaped character itself may be a quote: search after it.
                (i + 3..c.len().min(i + 12)).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match j {
                Some(j) => {
                    wipe(&mut out, i, j + 1);
                    i = j + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[derive(Debug, Clone, PartialEq)]
struct Tok {
    text: String,
    line: usize,
}

fn tokens(src: &str) -> Vec<Tok> {
    let c = blank(src);
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if is_ident(ch) {
            let s = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push(Tok {
                text: c[s..i].iter().collect(),
                line,
            });
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Tok {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Tok {
                text: ch.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The module tree and the references
// ---------------------------------------------------------------------------------------

/// A source file: its module path and its text.
struct File {
    name: String,
    module: Vec<String>,
    text: String,
}

/// The module path of `src/<rel>` (`a/b.rs` and `a/b/mod.rs` are `a::b`).
fn module_of(rel: &str) -> Option<Vec<String>> {
    let rel = rel.strip_suffix(".rs")?;
    let mut parts: Vec<String> = rel.split('/').map(String::from).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] {
        parts.clear();
    }
    Some(parts)
}

/// `#[cfg(test)]` at `toks[i]`: returns the index after the attribute.
fn cfg_test_at(toks: &[Tok], i: usize) -> Option<usize> {
    let want = ["#", "[", "cfg", "(", "test", ")", "]"];
    (toks.len() >= i + want.len() && want.iter().zip(&toks[i..]).all(|(w, t)| t.text == *w))
        .then_some(i + want.len())
}

/// Skip an attribute `#[...]` or `#![...]` at `i`; returns the index after it.
fn skip_attr(toks: &[Tok], i: usize) -> Option<usize> {
    if toks.get(i)?.text != "#" {
        return None;
    }
    let mut j = i + 1;
    if toks.get(j)?.text == "!" {
        j += 1;
    }
    if toks.get(j)?.text != "[" {
        return None;
    }
    let mut depth = 0;
    while j < toks.len() {
        match toks[j].text.as_str() {
            "[" => depth += 1,
            "]" => {
                depth -= 1;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}

/// Per token: the inline module it sits in (relative to the file's module) and whether
/// it is test-only code. Also the `mod x;` declarations of the file, with their flag.
struct Scopes {
    module: Vec<Vec<String>>,
    test: Vec<bool>,
    /// (inline module path relative to the file, declared child, test-only)
    decls: Vec<(Vec<String>, String, bool)>,
    /// Inline modules (relative path) declared with a body.
    inline: Vec<Vec<String>>,
}

fn scopes(toks: &[Tok]) -> Scopes {
    let n = toks.len();
    let mut s = Scopes {
        module: vec![Vec::new(); n],
        test: vec![false; n],
        decls: Vec::new(),
        inline: Vec::new(),
    };
    // Open braces: (is it an inline module's body, does it open test-only code).
    let mut stack: Vec<(Option<String>, bool)> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut pending_test = false;
    // Set when a test-only item is a statement (`#[cfg(test)] use ...;`): ends at `;`
    // at this brace depth.
    let mut test_stmt: Option<usize> = None;
    let mut i = 0;
    while i < n {
        let in_test = stack.iter().any(|(_, t)| *t) || test_stmt.is_some();
        if let Some(j) = cfg_test_at(toks, i) {
            pending_test = true;
            for k in i..j {
                s.module[k] = path.clone();
                s.test[k] = in_test;
            }
            i = j;
            continue;
        }
        if let Some(j) = skip_attr(toks, i) {
            for k in i..j {
                s.module[k] = path.clone();
                s.test[k] = in_test;
            }
            i = j;
            continue;
        }
        s.module[i] = path.clone();
        s.test[i] = in_test || pending_test;
        let t = toks[i].text.as_str();
        match t {
            "mod" if toks.get(i + 1).is_some_and(|t| is_ident_tok(&t.text)) => {
                let name = toks[i + 1].text.clone();
                match toks.get(i + 2).map(|t| t.text.as_str()) {
                    Some(";") => {
                        s.decls.push((path.clone(), name, in_test || pending_test));
                        pending_test = false;
                        s.module[i + 1] = path.clone();
                        s.module[i + 2] = path.clone();
                        s.test[i + 1] = s.test[i];
                        s.test[i + 2] = s.test[i];
                        i += 3;
                        continue;
                    }
                    Some("{") => {
                        stack.push((Some(name.clone()), pending_test));
                        pending_test = false;
                        path.push(name);
                        s.inline.push(path.clone());
                        s.module[i + 1] = path.clone();
                        s.module[i + 2] = path.clone();
                        s.test[i + 1] = s.test[i];
                        s.test[i + 2] = s.test[i];
                        i += 3;
                        continue;
                    }
                    _ => {}
                }
            }
            "{" => {
                stack.push((None, pending_test));
                pending_test = false;
            }
            "}" => {
                if let Some((m, _)) = stack.pop() {
                    if m.is_some() {
                        path.pop();
                    }
                }
            }
            ";" => {
                if pending_test {
                    pending_test = false;
                    test_stmt = Some(stack.len());
                }
                if test_stmt == Some(stack.len()) {
                    s.test[i] = true;
                    test_stmt = None;
                }
            }
            _ => {}
        }
        i += 1;
    }
    s
}

fn is_ident_tok(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// A path found in code: its segments as written, where it starts, whether it is test
/// code, and the module it was written in.
struct Ref {
    segs: Vec<String>,
    line: usize,
    test: bool,
    at: Vec<String>,
}

/// The paths in `toks` that start with `crate`, `super`, `self` or one of `roots`
/// (names that resolve relative to the current module), with `use` trees expanded.
fn refs(
    toks: &[Tok],
    sc: &Scopes,
    base: &[String],
    children: &dyn Fn(&[String]) -> bool,
) -> Vec<Ref> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let at: Vec<String> = base.iter().chain(&sc.module[i]).cloned().collect();
        if toks[i].text == "use" {
            // A use tree: expand `{...}` groups into full paths.
            let end = (i..toks.len())
                .find(|&j| toks[j].text == ";")
                .unwrap_or(toks.len());
            let mut paths = Vec::new();
            expand(&toks[i + 1..end], Vec::new(), &mut paths);
            for segs in paths {
                let first = segs.first().cloned().unwrap_or_default();
                let mut cand = at.clone();
                cand.push(first.clone());
                if matches!(first.as_str(), "crate" | "super" | "self") || children(&cand) {
                    out.push(Ref {
                        segs,
                        line: toks[i].line,
                        test: sc.test[i],
                        at: at.clone(),
                    });
                }
            }
            i = end + 1;
            continue;
        }
        let prev_is_sep = i > 0 && toks[i - 1].text == "::";
        if !prev_is_sep
            && is_ident_tok(&toks[i].text)
            && toks.get(i + 1).is_some_and(|t| t.text == "::")
        {
            let mut segs = vec![toks[i].text.clone()];
            let mut j = i + 1;
            while j + 1 < toks.len() && toks[j].text == "::" && is_ident_tok(&toks[j + 1].text) {
                segs.push(toks[j + 1].text.clone());
                j += 2;
            }
            let first = segs[0].clone();
            let mut cand = at.clone();
            cand.push(first.clone());
            if matches!(first.as_str(), "crate" | "super" | "self") || children(&cand) {
                out.push(Ref {
                    segs,
                    line: toks[i].line,
                    test: sc.test[i],
                    at,
                });
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// Expand a use tree (`a::{b, c::{d, e}}`, `a as b`, `a::*`) into its paths.
fn expand(toks: &[Tok], prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut cur = prefix.clone();
    let mut i = 0;
    let mut any = false;
    while i < toks.len() {
        let t = toks[i].text.as_str();
        match t {
            "{" => {
                let mut depth = 0;
                let mut j = i;
                while j < toks.len() {
                    match toks[j].text.as_str() {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                // Split the group at its top-level commas.
                let inner = &toks[i + 1..j.min(toks.len())];
                let (mut d, mut s) = (0, 0);
                for (k, tk) in inner.iter().enumerate() {
                    match tk.text.as_str() {
                        "{" => d += 1,
                        "}" => d -= 1,
                        "," if d == 0 => {
                            expand(&inner[s..k], cur.clone(), out);
                            s = k + 1;
                        }
                        _ => {}
                    }
                }
                expand(&inner[s..], cur.clone(), out);
                return;
            }
            "::" | "pub" | "(" | ")" | "in" => {}
            "as" => break,
            "*" => break,
            "," => {
                if cur.len() > prefix.len() {
                    out.push(cur.clone());
                }
                cur = prefix.clone();
                any = true;
            }
            _ if is_ident_tok(t) => cur.push(t.to_string()),
            _ => {}
        }
        i += 1;
    }
    let _ = any;
    if cur.len() > prefix.len() {
        out.push(cur);
    }
}

/// The module a path names: `at` is where it was written; the result is the longest
/// prefix of the absolute path that is a module.
fn resolve(r: &Ref, modules: &BTreeSet<String>) -> Option<Vec<String>> {
    let mut abs: Vec<String> = Vec::new();
    let mut segs = r.segs.iter().peekable();
    match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segs.next();
        }
        Some("self") => {
            segs.next();
            abs = r.at.clone();
        }
        Some("super") => {
            abs = r.at.clone();
            while segs.peek().is_some_and(|s| *s == "super") {
                segs.next();
                abs.pop()?;
            }
        }
        _ => abs = r.at.clone(),
    }
    abs.extend(segs.cloned());
    while !abs.is_empty() && !modules.contains(&abs.join("::")) {
        abs.pop();
    }
    Some(abs)
}

/// Analyse `files` (`src/`-relative name and text).
fn analyse(files: &[(String, String)]) -> Analysis {
    let mut parsed = Vec::new();
    for (name, text) in files {
        if name == "main.rs" {
            continue;
        }
        if let Some(module) = module_of(name) {
            parsed.push(File {
                name: name.clone(),
                module,
                text: text.clone(),
            });
        }
    }
    let toks: Vec<Vec<Tok>> = parsed.iter().map(|f| tokens(&f.text)).collect();
    let scs: Vec<Scopes> = toks.iter().map(|t| scopes(t)).collect();

    let mut a = Analysis::default();
    // Test-only file modules: declared `#[cfg(test)] mod x;` (or inside test code).
    let mut test_mods: BTreeSet<String> = BTreeSet::new();
    for (f, sc) in parsed.iter().zip(&scs) {
        for (rel, child, test) in &sc.decls {
            let m: Vec<String> = f.module.iter().chain(rel).chain([child]).cloned().collect();
            a.modules.insert(m.join("::"));
            if *test {
                test_mods.insert(m.join("::"));
            }
        }
        a.modules.insert(f.module.join("::"));
        for rel in &sc.inline {
            let m: Vec<String> = f.module.iter().chain(rel).cloned().collect();
            a.modules.insert(m.join("::"));
        }
    }
    let is_test_file = |m: &[String]| (1..=m.len()).any(|k| test_mods.contains(&m[..k].join("::")));
    let modules = a.modules.clone();
    let children = |cand: &[String]| modules.contains(&cand.join("::"));
    for ((f, t), sc) in parsed.iter().zip(&toks).zip(&scs) {
        let file_test = is_test_file(&f.module);
        for r in refs(t, sc, &f.module, &children) {
            let Some(to) = resolve(&r, &a.modules) else {
                continue;
            };
            let from = &r.at;
            let site = Site {
                file: format!("src/{}", f.name),
                line: r.line,
            };
            let (Some(ft), Some(tt)) = (from.first(), to.first()) else {
                continue;
            };
            let test = file_test || r.test;
            if ft != tt {
                let g = if test { &mut a.test_only } else { &mut a.top };
                g.entry(ft.clone())
                    .or_default()
                    .entry(tt.clone())
                    .or_insert(site.clone());
            } else if ft == "engine" && !test {
                let name = |m: &[String]| match m.get(1) {
                    Some(s) => format!("engine::{s}"),
                    None => "engine".to_string(),
                };
                let (fe, te) = (name(from), name(&to));
                if fe != te {
                    a.engine.entry(fe).or_default().entry(te).or_insert(site);
                }
            }
        }
    }
    a
}

// ---------------------------------------------------------------------------------------
// Cycles and layers
// ---------------------------------------------------------------------------------------

/// Every cycle's strongly connected component, as one cycle through it (`a -> b -> a`).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = g.keys().chain(g.values().flat_map(|e| e.keys())).collect();
    let mut seen_in_cycle: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for start in nodes {
        if seen_in_cycle.contains(start) {
            continue;
        }
        // Shortest way back to `start` (breadth-first), if any.
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut found = None;
        while let Some(n) = queue.pop_front() {
            for m in g.get(&n).into_iter().flat_map(|e| e.keys()) {
                if m == start {
                    found = Some(n.clone());
                    break;
                }
                if !prev.contains_key(m) {
                    prev.insert(m.clone(), n.clone());
                    queue.push_back(m.clone());
                }
            }
            if found.is_some() {
                break;
            }
        }
        if let Some(last) = found {
            let mut path = vec![last.clone()];
            let mut n = last;
            while &n != start {
                n = prev[&n].clone();
                path.push(n.clone());
            }
            path.reverse();
            path.push(start.clone());
            seen_in_cycle.extend(path.iter().cloned());
            out.push(path);
        }
    }
    out
}

fn show_cycle(g: &Graph, c: &[String]) -> String {
    let mut s = c.join(" -> ");
    for w in c.windows(2) {
        let site = &g[&w[0]][&w[1]];
        s.push_str(&format!(
            "\n    {} -> {}: {}:{}",
            w[0], w[1], site.file, site.line
        ));
    }
    s
}

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&m))
}

/// Edges that do not go to a lower layer, and modules missing from [`LAYERS`].
fn layer_violations(g: &Graph, modules: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let tops: BTreeSet<&str> = modules
        .iter()
        .filter(|m| !m.is_empty() && !m.contains("::"))
        .map(|m| m.as_str())
        .collect();
    for m in &tops {
        if layer_of(m).is_none() {
            out.push(format!(
                "module `{m}` is in no layer: add it to LAYERS in tests/layout.rs (and the diagram in src/lib.rs)"
            ));
        }
    }
    for (from, edges) in g {
        for (to, site) in edges {
            if let (Some(f), Some(t)) = (layer_of(from), layer_of(to)) {
                if t <= f {
                    out.push(format!(
                        "`{from}` imports `{to}`, which is not below it ({}:{})",
                        site.file, site.line
                    ));
                }
            }
        }
    }
    out
}

/// What telemetry imports that is not a leaf (a module that imports nothing itself).
fn telemetry_violations(g: &Graph) -> Vec<String> {
    g.get("telemetry")
        .into_iter()
        .flatten()
        .filter(|(to, _)| g.get(*to).is_some_and(|e| !e.is_empty()))
        .map(|(to, site)| {
            format!(
                "telemetry imports `{to}`, which is not a leaf ({}:{})",
                site.file, site.line
            )
        })
        .collect()
}

fn print_graph(title: &str, g: &Graph) {
    println!("{title}");
    for (from, edges) in g {
        let to: Vec<&str> = edges.keys().map(|s| s.as_str()).collect();
        println!("  {from} -> {}", to.join(", "));
    }
}

fn read_src() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn layers_import_only_downward() {
    let a = analyse(&read_src());
    println!("layers, top first (a module imports only from the layers below it):");
    for (i, layer) in LAYERS.iter().enumerate() {
        let mods: Vec<String> = layer
            .iter()
            .map(|m| {
                let to: Vec<&str> = a
                    .top
                    .get(*m)
                    .into_iter()
                    .flat_map(|e| e.keys().map(|s| s.as_str()))
                    .collect();
                if to.is_empty() {
                    format!("{m} (leaf)")
                } else {
                    format!("{m} -> {}", to.join(", "))
                }
            })
            .collect();
        println!("  {}: {}", LAYERS.len() - 1 - i, mods.join("; "));
    }
    print_graph("test-only edges (not judged):", &a.test_only);
    let engine_cycles = cycles(&a.engine);
    print_graph("engine's submodules:", &a.engine);
    if engine_cycles.is_empty() {
        println!("engine cycles: none");
    }

    let top_cycles = cycles(&a.top);
    let mut problems: Vec<String> = top_cycles
        .iter()
        .map(|c| format!("import cycle: {}", show_cycle(&a.top, c)))
        .collect();
    // Judged since the session core took the driver/forward/store/worker circle apart.
    problems.extend(
        engine_cycles
            .iter()
            .map(|c| format!("engine import cycle: {}", show_cycle(&a.engine, c))),
    );
    problems.extend(layer_violations(&a.top, &a.modules));
    problems.extend(telemetry_violations(&a.top));
    if top_cycles.is_empty() {
        println!("top-level cycles: none");
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
    // The parser found the crate: a check that reads nothing would pass everything.
    assert!(a.top.len() >= 5, "too few edges found: {:?}", a.top);
}

fn synthetic(files: &[(&str, &str)]) -> Analysis {
    let v: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    analyse(&v)
}

#[test]
fn a_synthetic_cycle_is_found_and_named() {
    let a = synthetic(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a.rs", "use crate::b::Thing;\n"),
        ("b/mod.rs", "pub mod inner;\npub struct Thing;\n"),
        // Through a group, a `super` path and a call in code, not only a plain `use`.
        (
            "b/inner.rs",
            "use crate::{c::{self, X}};\nfn f() { super::Thing; }\n",
        ),
        ("c.rs", "pub struct X;\nfn g() -> u8 { crate::a::h() }\n"),
    ]);
    let c = cycles(&a.top);
    assert_eq!(c.len(), 1, "{:?}", a.top);
    let shown = show_cycle(&a.top, &c[0]);
    assert!(shown.starts_with("a -> b -> c -> a"), "{shown}");
    assert!(shown.contains("src/b/inner.rs:1"), "{shown}");
    assert!(shown.contains("src/c.rs:2"), "{shown}");
}

#[test]
fn test_code_comments_and_strings_make_no_edge() {
    let a = synthetic(&[
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        ("a.rs", "pub fn f() {}\n#[cfg(test)]\nmod tests;\n"),
        ("a/tests.rs", "use crate::b::Y;\n"),
        (
            "b.rs",
            "// crate::a::f()\n/* crate::a */\nconst S: &str = \"crate::a::f\";\n\
             const R: &str = r#\"crate::a\"#;\nfn l<'x>(c: char) -> bool { c == '\"' }\n\
             #[cfg(test)]\nmod tests { use crate::a::f; }\n\
             #[cfg(test)]\nuse crate::a::f as g;\npub struct Y;\n",
        ),
    ]);
    assert!(a.top.is_empty(), "{:?}", a.top);
    assert!(a.test_only["a"].contains_key("b"), "{:?}", a.test_only);
    assert!(a.test_only["b"].contains_key("a"), "{:?}", a.test_only);
}

#[test]
fn relative_paths_through_child_modules_resolve() {
    let a = synthetic(&[
        ("lib.rs", "pub mod engine;\npub mod telemetry;\n"),
        (
            "engine/mod.rs",
            "pub mod shared;\npub mod reload;\nuse shared::S;\n",
        ),
        ("engine/shared.rs", "pub struct S;\n"),
        (
            "engine/reload.rs",
            "use super::shared::S;\nfn f() { super::build(); }\n",
        ),
        ("telemetry.rs", "use crate::engine::shared::S;\n"),
    ]);
    assert!(
        a.engine["engine"].contains_key("engine::shared"),
        "{:?}",
        a.engine
    );
    assert!(
        a.engine["engine::reload"].contains_key("engine"),
        "{:?}",
        a.engine
    );
    assert!(a.top["telemetry"].contains_key("engine"));
    // telemetry imports a module that imports nothing: allowed by the leaf rule, and
    // caught when that module imports something.
    assert!(telemetry_violations(&a.top).is_empty());
    let b = synthetic(&[
        ("lib.rs", "pub mod x;\npub mod y;\npub mod telemetry;\n"),
        ("x.rs", "use crate::y::Z;\n"),
        ("y.rs", "pub struct Z;\n"),
        ("telemetry.rs", "use crate::x::Q;\n"),
    ]);
    assert_eq!(telemetry_violations(&b.top).len(), 1);
}

#[test]
fn an_upward_import_and_an_unlisted_module_are_named() {
    let a = synthetic(&[
        (
            "lib.rs",
            "pub mod engine;\npub mod control;\npub mod newthing;\n",
        ),
        ("engine.rs", "use crate::control::serve;\n"),
        ("control.rs", "pub fn serve() {}\n"),
        ("newthing.rs", "\n"),
    ]);
    let v = layer_violations(&a.top, &a.modules);
    assert!(
        v.iter().any(|m| m.contains("`engine` imports `control`")),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|m| m.contains("module `newthing` is in no layer")),
        "{v:?}"
    );
}

#[test]
fn a_cycle_among_engine_submodules_is_found() {
    let a = synthetic(&[
        ("lib.rs", "pub mod engine;\n"),
        ("engine/mod.rs", "mod driver;\nmod store;\n"),
        ("engine/driver.rs", "use super::store::serve;\n"),
        ("engine/store.rs", "use crate::engine::driver::End;\n"),
    ]);
    let c = cycles(&a.engine);
    assert_eq!(c.len(), 1, "{c:?}");
    let shown = show_cycle(&a.engine, &c[0]);
    assert!(
        shown.contains("engine::driver") && shown.contains("engine::store"),
        "{shown}"
    );
}
