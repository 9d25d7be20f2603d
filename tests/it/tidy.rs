//! Tidy checks on the source tree, in the spirit of rust-analyzer's: every
//! `use crate::...` (and every inline `crate::` path) of library code points
//! down the layer order ARCHITECTURE.md writes down, no SQL text lives
//! outside `ledger`, and every source file opens with its `//!` paragraph.
//! Test code (`mod tests`, `tests.rs`) may reach across layers.

use std::path::{Path, PathBuf};

/// The layers, from the floor up; ARCHITECTURE.md's "Layers" mirrors it.
/// A module imports only from layers below its own: modules of one layer
/// are independent of each other.
const LAYERS: &[&[&str]] = &[
    &["history", "sys", "console"],
    &["s3", "ledger", "oracle", "net"],
    &["workload", "cluster"],
    &["faults", "exit"],
    &["profile"],
    &["online"],
    &["selftest"],
    &["verdict"],
    &["report"],
    &["run"],
    &["bench"],
    &["cli"],
];

/// Where a file's test module starts: everything after it is test code.
const TEST_MODULE: &str = "#[cfg(test)]\nmod tests {";

/// What SQL text looks like, upper-cased.
const SQL: &[&str] = &["SELECT ", "INSERT INTO", "CREATE TABLE", "DELETE FROM"];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Library code of `text` with comments, string and char literals blanked
/// out, and the trailing `#[cfg(test)] mod tests { ... }` cut off.
fn code_of(text: &str) -> String {
    let text = match text.find(TEST_MODULE) {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
                i = end;
                out.push(' ');
            }
            b'r' if matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
                let close = format!("\"{}", "#".repeat(hashes));
                let start = i + 1 + hashes + 1;
                let end = text[start..]
                    .find(&close)
                    .map_or(b.len(), |e| start + e + close.len());
                out.push_str("\"\"");
                i = end;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}'); otherwise a lifetime.
                if b.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                    out.push_str("' '");
                } else if let Some(c) = text[i + 1..].chars().next()
                    && text[i + 1 + c.len_utf8()..].starts_with('\'')
                {
                    i += 1 + c.len_utf8() + 1;
                    out.push_str("' '");
                } else {
                    out.push('\'');
                    i += 1;
                }
            }
            _ => {
                let c = text[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The modules `code` names through `crate::`, with their line numbers.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first segment of each
            // top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        item_start = false;
                        let name: String = group[j..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        found.push((line, name));
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push((line, name));
        }
    }
    found
}

/// The library module a source file belongs to (`src/a.rs`, `src/a/...`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn is_test_file(file: &Path) -> bool {
    file.file_name().is_some_and(|n| n == "tests.rs")
}

/// Every problem the layer rules find in the tree under `src`.
fn layer_problems(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(src.parent().unwrap())
            .unwrap()
            .display()
            .to_string();
        let text = std::fs::read_to_string(file).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            problems.push(format!(
                "{rel}: does not open with a //! paragraph on its role"
            ));
        }
        let module = module_of(src, file);
        if module == "lib" || module == "main" || is_test_file(file) {
            continue;
        }
        let Some(own) = layer(&module) else {
            problems.push(format!(
                "{rel}: module `{module}` has no layer: add it to LAYERS (tests/it/tidy.rs) and ARCHITECTURE.md"
            ));
            continue;
        };
        let code = code_of(&text);
        for (line, target) in crate_paths(&code) {
            if target == module {
                continue;
            }
            match layer(&target) {
                Some(l) if l < own => {}
                Some(l) => problems.push(format!(
                    "{rel}:{line}: `{module}` (layer {own}) imports `crate::{target}` (layer {l}): imports must point down"
                )),
                None => problems.push(format!(
                    "{rel}:{line}: `crate::{target}` is not a module of any layer"
                )),
            }
        }
        if module != "ledger" {
            let lib = &text[..text.find(TEST_MODULE).unwrap_or(text.len())];
            for (n, l) in lib.lines().enumerate() {
                let t = l.trim_start();
                let u = t.to_ascii_uppercase();
                if !t.starts_with("//") && SQL.iter().any(|k| u.contains(k)) {
                    problems.push(format!(
                        "{rel}:{}: SQL outside `ledger`: ask the ledger through a typed query",
                        n + 1
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn imports_point_down_the_layers_and_every_file_says_what_it_is_for() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = layer_problems(&src);
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_layer_check_fails_on_an_upward_import_a_missing_paragraph_and_stray_sql() {
    let dir = std::env::temp_dir().join(format!("fl-tidy-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("oracle")).unwrap();
    std::fs::write(
        src.join("oracle/mod.rs"),
        "//! The oracle.\nuse crate::history::OpRecord;\nuse crate::{ledger::Ledger, sys};\n\
         fn f() { let s = \"crate::run is only text\"; crate::workload::go(); }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("report.rs"),
        "use crate::history::OpKind;\nconst Q: &str = \"SELECT 1\";\n",
    )
    .unwrap();
    std::fs::write(
        src.join("history.rs"),
        "//! Vocabulary.\n// crate::cli in a comment is no import.\n#[cfg(test)]\nmod tests {\n    use crate::run::x;\n}\n",
    )
    .unwrap();
    std::fs::write(src.join("newthing.rs"), "//! New.\n").unwrap();
    let problems = layer_problems(&src);
    std::fs::remove_dir_all(&dir).unwrap();
    let has = |s: &str| problems.iter().any(|p| p.contains(s));
    assert!(
        has("src/oracle/mod.rs:3: `oracle` (layer 1) imports `crate::ledger` (layer 1)"),
        "{problems:#?}"
    );
    assert!(
        has("src/oracle/mod.rs:4: `oracle` (layer 1) imports `crate::workload` (layer 2)"),
        "{problems:#?}"
    );
    assert!(
        has("src/report.rs: does not open with a //! paragraph"),
        "{problems:#?}"
    );
    assert!(
        has("src/report.rs:2: SQL outside `ledger`"),
        "{problems:#?}"
    );
    assert!(has("module `newthing` has no layer"), "{problems:#?}");
    // Down-pointing imports, text in strings and comments, and test code
    // are not problems.
    assert_eq!(problems.len(), 5, "{problems:#?}");
}
