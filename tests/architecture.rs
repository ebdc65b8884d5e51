//! The crate's layering, enforced: every top-level module of `src/` may use only the modules
//! below it in [`LAYERS`] (and `export`, a side branch, is used only by the ones that put it to
//! work). A `use` or path that reaches up fails this test, naming the file, the line and the
//! import, so that the structure described in `src/lib.rs` cannot silently decay. Unit tests
//! (`#[cfg(test)]` code) may reach anywhere and are not read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The top-level modules, bottom up: each may use the ones before it.
const LAYERS: &[&str] = &[
    "util",
    "supervise",
    "embedded",
    "record",
    "config",
    "outcome",
    "stats",
    "export",
    "kafka",
    "registry",
    "probe",
    "verify",
    "discovery",
    "report",
    "server",
    "agent",
    "rules",
    "cli",
];

/// Side branches: modules that only these may use, whatever the order says.
const SIDE: &[(&str, &[&str])] = &[("export", &["server", "agent", "rules", "cli"])];

/// Files that are not a layer: the crate root, the binary, test-only support, and the build
/// script (`build = "src/build.rs"` in Cargo.toml: a program of its own, not a module).
const NOT_LAYERS: &[&str] = &["lib.rs", "main.rs", "testing.rs", "build.rs"];

/// One way a file breaks the layering.
#[derive(Debug, PartialEq)]
struct Violation {
    file: String,
    line: usize,
    import: String,
    why: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: `{}`: {}",
            self.file, self.line, self.import, self.why
        )
    }
}

/// `text` without comments and without `#[cfg(test)]` items, line breaks kept so that line
/// numbers still point into the file.
fn without_tests_and_comments(text: &str) -> String {
    // Comments first (string literals in this crate never hold `//` next to a `crate::` path).
    let mut code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    // Then every item marked `#[cfg(test)]`: up to its matching closing brace, or its `;`.
    while let Some(start) = code.find("#[cfg(test)]") {
        let rest = &code[start..];
        let brace = rest.find('{');
        let semi = rest.find(';');
        let end = match (brace, semi) {
            (Some(b), Some(s)) if s < b => start + s + 1,
            (Some(b), _) => {
                let mut depth = 0;
                let mut end = code.len();
                for (i, c) in rest[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = start + b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => start + s + 1,
            (None, None) => code.len(),
        };
        let blanked: String = code[start..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        code.replace_range(start..end, &blanked);
    }
    code
}

/// The top-level modules `code` uses (`crate::x::...`, `use crate::{x, y::z}` over any number
/// of lines), each with the byte offset where it is named.
fn modules_used(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i + "crate::".len();
        let after = &code[at..];
        if let Some(group) = after.strip_prefix('{') {
            // `crate::{a::B, c}`: the first segment of each entry at depth 0.
            let mut depth = 0;
            let mut entry = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push((at, first_segment(&entry)));
                        entry.clear();
                        continue;
                    }
                    _ => {}
                }
                entry.push(c);
            }
            out.push((at, first_segment(&entry)));
        } else {
            out.push((at, first_segment(after)));
        }
        from = at;
    }
    out.retain(|(_, m)| !m.is_empty() && m != "self");
    out
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level module a file of `src/` belongs to.
fn layer_of(relative: &Path) -> String {
    let first = relative.components().next().unwrap().as_os_str();
    let first = first.to_string_lossy();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// Every violation in the file `name` (of module `module`) with this text.
fn check(name: &str, module: &str, text: &str) -> Vec<Violation> {
    let Some(own) = LAYERS.iter().position(|l| *l == module) else {
        return vec![Violation {
            file: name.into(),
            line: 1,
            import: format!("mod {module}"),
            why: format!(
                "module `{module}` is not in the declared layers: add it to LAYERS in tests/architecture.rs (and the tour in src/lib.rs) where it belongs"
            ),
        }];
    };
    let mut found = Vec::new();
    let code = without_tests_and_comments(text);
    for (at, used) in modules_used(&code) {
        if used == module {
            continue;
        }
        let line = code[..at].matches('\n').count();
        let import = text
            .lines()
            .nth(line)
            .unwrap_or_default()
            .trim()
            .to_string();
        {
            let why = match LAYERS.iter().position(|l| *l == used) {
                None => format!("uses `{used}`, which is not in the declared layers"),
                Some(theirs) if theirs > own => {
                    format!("`{module}` uses `{used}`, which is above it in the declared order")
                }
                Some(_) => match SIDE.iter().find(|(side, _)| *side == used) {
                    Some((_, users)) if !users.contains(&module) => format!(
                        "`{used}` is a side branch, used only by {}; `{module}` must report through an interface instead",
                        users.join(", ")
                    ),
                    _ => continue,
                },
            };
            found.push(Violation {
                file: name.into(),
                line: line + 1,
                import,
                why,
            });
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every file of `src/` that belongs to a layer: its name, its module and its text.
fn layer_files() -> Vec<(String, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&src).unwrap();
            if NOT_LAYERS.contains(&relative.to_string_lossy().as_ref()) {
                return None;
            }
            let text = std::fs::read_to_string(path).unwrap();
            Some((
                format!("src/{}", relative.display()),
                layer_of(relative),
                text,
            ))
        })
        .collect()
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, module, text) in layer_files() {
        seen.insert(module.clone());
        violations.extend(check(&name, &module, &text));
    }
    assert!(
        violations.is_empty(),
        "the layering is broken:\n{}",
        violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let declared: BTreeSet<String> = LAYERS.iter().map(|l| l.to_string()).collect();
    assert_eq!(
        seen, declared,
        "every declared layer exists, and only those"
    );
}

/// The checker itself can fail: an import reaching up, a side branch used from below, a new
/// module nobody placed; and it ignores comments and unit tests.
#[test]
fn the_checker_names_each_kind_of_violation() {
    let upward = "use crate::outcome::Outcome;\nuse crate::agent::Agent;\n";
    assert_eq!(
        check("src/probe/x.rs", "probe", upward),
        [Violation {
            file: "src/probe/x.rs".into(),
            line: 2,
            import: "use crate::agent::Agent;".into(),
            why: "`probe` uses `agent`, which is above it in the declared order".into(),
        }]
    );
    let grouped = "use crate::{\n    config::ProbeConfig,\n    report::{Verdict, Status},\n};";
    assert_eq!(
        check("src/stats/x.rs", "stats", grouped)[0].why,
        "`stats` uses `report`, which is above it in the declared order"
    );
    let side = "use crate::export::metrics::Metrics;";
    assert!(
        check("src/probe/x.rs", "probe", side)[0]
            .why
            .starts_with("`export` is a side branch")
    );
    assert!(check("src/server.rs", "server", side).is_empty());
    let hidden = "// use crate::agent::Agent;\n#[cfg(test)]\nmod tests {\n    use crate::agent::Agent;\n}\n#[cfg(test)]\nuse crate::cli::Exit;\n";
    assert!(check("src/probe/x.rs", "probe", hidden).is_empty());
    assert!(
        check("src/newthing.rs", "newthing", "")[0]
            .why
            .starts_with("module `newthing` is not in the declared layers")
    );
}

/// What the checker reads, printed (`cargo test --test architecture -- --nocapture`): every
/// module's uses of the others.
#[test]
fn the_edges_it_sees() {
    let mut edges = BTreeSet::new();
    for (_, module, text) in layer_files() {
        for (_, used) in modules_used(&without_tests_and_comments(&text)) {
            if used != module {
                edges.insert((module.clone(), used));
            }
        }
    }
    for (from, to) in &edges {
        println!("{from} -> {to}");
    }
    // the crate is layered, not flat: the top uses much of what is below it
    assert!(edges.len() > 30, "{edges:?}");
}
