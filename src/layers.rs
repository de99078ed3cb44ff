//! The dependency rule of `lib.rs`, checked on the sources: every path that names a module of
//! this crate (`crate::x`, `super::…::x`, grouped `crate::{x::…, y}`, in `use` or inline) must
//! point down the layers or sideways within its own layer.
//!
//! Sources are read as tokens: comments, strings and characters are skipped, and inline modules
//! (`mod tests { … }`) are followed so that `super` resolves as the compiler resolves it.
use std::path::{Path, PathBuf};

/// What each layer may use. A top-level module missing here and in [`WIRING`] fails the check:
/// a new module must say where it stands.
const LAYERS: &[(&str, &[&str])] = &[
    ("resources", &["resources"]),
    ("lifecycle", &["resources", "lifecycle"]),
    ("runtime", &["resources", "lifecycle", "runtime"]),
    (
        "reconcile",
        &["resources", "lifecycle", "runtime", "reconcile"],
    ),
    ("api", &["resources", "lifecycle", "runtime", "api"]),
    // Binaries beside the operator's (`src/bin/`): the kubectl plugin reads what users write
    // and the pure decisions, nothing that talks to the cluster on the operator's behalf. A
    // binary's own modules (`super::…` in its tests) stand sideways, as in every layer.
    ("bin", &["resources", "lifecycle", "bin"]),
];

/// The wiring on top, which may use every layer: `lib.rs` and `main.rs` themselves (the crate
/// roots), `operator.rs`, the command line, and this check.
const WIRING: &[&str] = &["", "operator", "cli", "layers"];

/// This crate's name, as binaries beside the library (`src/bin/`) write it.
const CRATE: &str = "plugin_operator";

/// One path that runs the wrong way.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: String,
    pub line: usize,
    pub from: String,
    pub to: String,
    pub path: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allowed = LAYERS
            .iter()
            .find(|(layer, _)| *layer == self.from)
            .map_or_else(
                || "nothing: it is in no layer".to_owned(),
                |(_, a)| a.join(", "),
            );
        write!(
            f,
            "{}:{}: {} uses {} (`{}`); {} may use only {allowed}",
            self.file, self.line, self.from, self.to, self.path, self.from
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

/// Tokens with their line numbers; comments, strings and character literals are left out.
fn tokens(source: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            '"' => i = skip_string(&chars, i + 1, None, &mut line),
            'r' | 'b' if is_raw_string(&chars, i) => {
                let mut j = i + 1;
                if chars[j] == 'r' {
                    j += 1;
                }
                let mut hashes = 0;
                while chars[j] == '#' {
                    hashes += 1;
                    j += 1;
                }
                i = skip_string(&chars, j + 1, Some(hashes), &mut line);
            }
            '\'' => {
                // A character literal ('x', '\n', '\u{1F600}'), or a lifetime ('a).
                if next == Some('\\') {
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if chars.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            ':' if next == Some(':') => {
                out.push((Token::PathSep, line));
                i += 2;
            }
            '{' => {
                out.push((Token::Open, line));
                i += 1;
            }
            '}' => {
                out.push((Token::Close, line));
                i += 1;
            }
            ',' => {
                out.push((Token::Comma, line));
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                // `b"…"` and `b'x'` are literals; an identifier never ends right before them.
                if word == "b" && matches!(chars.get(i), Some('"' | '\'')) {
                    continue;
                }
                out.push((Token::Ident(word), line));
            }
            c if c.is_whitespace() => i += 1,
            _ => {
                out.push((Token::Other, line));
                i += 1;
            }
        }
    }
    out
}

fn is_raw_string(chars: &[char], i: usize) -> bool {
    let previous_is_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    if previous_is_ident {
        return false;
    }
    let mut j = i + 1;
    if chars[i] == 'b' {
        if chars.get(j) != Some(&'r') {
            return false;
        }
        j += 1;
    }
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    chars.get(j) == Some(&'"')
}

/// Skips a string whose body starts at `i`, closed by `"` (and, for a raw string, its number of
/// `#`); returns the index after it.
fn skip_string(chars: &[char], mut i: usize, raw: Option<usize>, line: &mut usize) -> usize {
    let hashes = raw.unwrap_or(0);
    while i < chars.len() {
        match chars[i] {
            '\\' if raw.is_none() => i += 2,
            '"' if chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes =>
            {
                return i + 1 + hashes;
            }
            c => {
                if c == '\n' {
                    *line += 1;
                }
                i += 1;
            }
        }
    }
    i
}

/// The module path of a source file under `src/`: `api/routes/mod.rs` → `[api, routes]`,
/// `lib.rs` and `main.rs` → `[]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let Some(file) = parts.pop() else {
        return parts;
    };
    let stem = file.trim_end_matches(".rs");
    if !(stem == "mod" || (parts.is_empty() && (stem == "lib" || stem == "main"))) {
        parts.push(stem.to_owned());
    }
    parts
}

/// The top-level modules of this crate that `source` (the file at `module`) names, with the
/// line and the path as written.
fn references(module: &[String], source: &str) -> Vec<(String, usize, String)> {
    let tokens = tokens(source);
    let mut found = Vec::new();
    // Inline modules: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].0 {
            Token::Open => depth += 1,
            Token::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some((Token::Ident(name), _)), Some((Token::Open, _))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    inline.push((name.clone(), depth + 1));
                }
            }
            Token::Ident(word) if word == "crate" || word == "super" || word == CRATE => {
                let previous_is_path = i > 0 && tokens[i - 1].0 == Token::PathSep;
                if !previous_is_path {
                    let mut here: Vec<String> = module.to_vec();
                    here.extend(inline.iter().map(|(name, _)| name.clone()));
                    found.extend(resolve(&tokens, i, here));
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Resolves the path that starts at token `start` (`crate` or `super`) from the module `here`.
fn resolve(
    tokens: &[(Token, usize)],
    start: usize,
    mut here: Vec<String>,
) -> Vec<(String, usize, String)> {
    let line = tokens[start].1;
    let mut written = String::new();
    let mut i = start;
    // Leading `crate` / `super` segments.
    loop {
        match &tokens[i].0 {
            Token::Ident(w) if (w == "crate" || w == CRATE) && i == start => here.clear(),
            Token::Ident(w) if w == "super" => {
                if here.pop().is_none() {
                    return Vec::new();
                }
            }
            _ => break,
        }
        written.push_str(match &tokens[i].0 {
            Token::Ident(w) => w,
            _ => "",
        });
        if tokens.get(i + 1).map(|t| &t.0) != Some(&Token::PathSep) {
            return Vec::new();
        }
        written.push_str("::");
        i += 2;
        if i >= tokens.len() {
            return Vec::new();
        }
    }
    if !here.is_empty() {
        // Below the top: the path stays inside the module it names.
        return vec![(here[0].clone(), line, format!("{written}…"))];
    }
    match &tokens[i].0 {
        Token::Ident(name) => vec![(name.clone(), line, format!("{written}{name}"))],
        Token::Open => group_heads(tokens, i)
            .into_iter()
            .map(|(name, line)| (name.clone(), line, format!("{written}{{{name}…}}")))
            .collect(),
        _ => Vec::new(),
    }
}

/// The first segment of every item of the group that opens at token `open`.
fn group_heads(tokens: &[(Token, usize)], open: usize) -> Vec<(String, usize)> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (token, line) in &tokens[open..] {
        match token {
            Token::Open => {
                depth += 1;
                expect_head = depth == 1;
            }
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Token::Comma if depth == 1 => expect_head = true,
            Token::Ident(name) if depth == 1 && expect_head => {
                heads.push((name.clone(), *line));
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// Checks one file (`relative` to `src/`).
pub fn check_source(relative: &Path, source: &str) -> Vec<Violation> {
    let module = module_path(relative);
    let from = module.first().cloned().unwrap_or_default();
    if WIRING.contains(&from.as_str()) {
        return Vec::new();
    }
    let allowed = LAYERS
        .iter()
        .find(|(layer, _)| *layer == from)
        .map_or(&[][..], |(_, allowed)| *allowed);
    let file = Path::new("src").join(relative).display().to_string();
    let mut violations = Vec::new();
    if allowed.is_empty() {
        violations.push(Violation {
            file: file.clone(),
            line: 1,
            from: from.clone(),
            to: "anything".into(),
            path: "(a module in no layer)".into(),
        });
    }
    for (to, line, path) in references(&module, source) {
        let known = LAYERS.iter().any(|(layer, _)| *layer == to) || WIRING.contains(&to.as_str());
        if known && !allowed.contains(&to.as_str()) {
            violations.push(Violation {
                file: file.clone(),
                line,
                from: from.clone(),
                to,
                path,
            });
        }
    }
    violations
}

/// Checks every source file under `src`.
pub fn check_tree(src: &Path) -> Vec<Violation> {
    let mut files = Vec::new();
    collect(src, &mut files);
    files.sort();
    files
        .iter()
        .flat_map(|file| {
            let relative = file.strip_prefix(src).unwrap_or(file);
            let source = std::fs::read_to_string(file).unwrap_or_else(|err| {
                panic!("cannot read {}: {err}", file.display());
            });
            check_source(relative, &source)
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn arrows_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let violations = check_tree(&src);
    let report: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "arrows run back (see the rule at the top of src/lib.rs):\n{}",
        report.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(file: &str, source: &str) -> Vec<(String, String)> {
        check_source(Path::new(file), source)
            .into_iter()
            .map(|v| (v.from, v.to))
            .collect()
    }

    fn back(from: &str, to: &str) -> Vec<(String, String)> {
        vec![(from.to_owned(), to.to_owned())]
    }

    #[test]
    fn grouped_imports_are_caught() {
        let source = "use crate::{\n    reconcile::install::plan,\n    resources::Plugin,\n};";
        assert_eq!(check("api/x.rs", source), back("api", "reconcile"));
        let nested = "use crate::{resources::{Plugin, names}, runtime::{cache::{self, Caches}}};";
        assert_eq!(
            check("lifecycle/x.rs", nested),
            back("lifecycle", "runtime")
        );
    }

    #[test]
    fn a_module_imported_whole_is_caught() {
        assert_eq!(
            check("runtime/x.rs", "use crate::reconcile;"),
            back("runtime", "reconcile")
        );
        assert_eq!(
            check("resources/x.rs", "pub use crate::lifecycle as l;"),
            back("resources", "lifecycle")
        );
    }

    #[test]
    fn relative_paths_are_resolved() {
        let source = "use super::super::reconcile::Error;";
        assert_eq!(check("api/routes/mod.rs", source), back("api", "reconcile"));
        // From api::routes::endpoints, two steps up is still api.
        assert!(check("api/routes/endpoints.rs", source).is_empty());
        assert_eq!(
            check(
                "api/routes/endpoints.rs",
                "super::super::super::reconcile::install::plan(&w);"
            ),
            back("api", "reconcile")
        );
        assert_eq!(
            check("api/mod.rs", "use super::reconcile;"),
            back("api", "reconcile")
        );
        // In an inline module, `super` is the file's module first.
        let inline = "mod tests {\n    use super::super::reconcile;\n}\n";
        assert!(check("api/x.rs", inline).is_empty(), "api::reconcile");
        assert_eq!(check("api/mod.rs", inline), back("api", "reconcile"));
    }

    #[test]
    fn inline_paths_are_caught() {
        let source = "fn f(w: &World) -> Plan {\n    crate::reconcile::install::plan(w)\n}";
        let found = check_source(Path::new("api/x.rs"), source);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 2);
        assert_eq!(found[0].path, "crate::reconcile");
        assert_eq!(
            found[0].to_string(),
            "src/api/x.rs:2: api uses reconcile (`crate::reconcile`); api may use only resources, lifecycle, runtime, api"
        );
    }

    #[test]
    fn api_and_reconcile_stand_side_by_side() {
        assert_eq!(
            check("reconcile/x.rs", "use crate::api::ApiState;"),
            back("reconcile", "api")
        );
        assert_eq!(
            check("api/x.rs", "use crate::operator::run;"),
            back("api", "operator")
        );
        assert!(check("operator.rs", "use crate::{api, reconcile};").is_empty());
        assert!(check("lib.rs", "pub mod reconcile;").is_empty());
    }

    #[test]
    fn comments_strings_and_characters_are_not_code() {
        let source = r####"
            // use crate::reconcile;
            /* crate::reconcile::x /* nested */ crate::reconcile */
            /// [`crate::reconcile`]
            const A: &str = "crate::reconcile::x";
            const B: &str = r#"crate::{reconcile}"#;
            const C: char = '"';
            const D: &[u8] = b"crate::reconcile";
            fn f<'a>(x: &'a str) -> &'a str { x }
            use crate::resources::Plugin;
        "####;
        assert!(check("lifecycle/x.rs", source).is_empty());
    }

    #[test]
    fn binaries_beside_the_operator_use_only_resources_and_lifecycle() {
        let source = "use plugin_operator::{lifecycle::resolve, runtime::cache::Caches};";
        assert_eq!(
            check("bin/kubectl-plugin.rs", source),
            back("bin", "runtime")
        );
        assert!(
            check(
                "bin/kubectl-plugin.rs",
                "use plugin_operator::resources::Plugin;"
            )
            .is_empty()
        );
        assert!(check("main.rs", "use plugin_operator::runtime::telemetry;").is_empty());
    }

    #[test]
    fn a_module_in_no_layer_is_refused() {
        assert_eq!(check("kubectl/x.rs", ""), back("kubectl", "anything"));
    }

    #[test]
    fn module_paths() {
        assert_eq!(module_path(Path::new("lib.rs")), Vec::<String>::new());
        assert_eq!(module_path(Path::new("api/mod.rs")), ["api"]);
        assert_eq!(
            module_path(Path::new("api/routes/endpoints.rs")),
            ["api", "routes", "endpoints"]
        );
    }
}
