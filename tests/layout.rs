//! The layout rules: dependencies between the crate's top-level modules point one way (no
//! import cycle), so each module can be read, and changed, on top of the ones below it; and no
//! source file outgrows what one reader holds in mind (tests aside). The graph is read from the source: every `crate::module` a module's non-test code
//! names, in a path or a `use crate::{...}` group; comments and test-only files do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>>;

#[test]
fn top_level_modules_have_no_import_cycle() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        graph.contains_key("proxy") && graph["proxy"].contains_key("auth"),
        "the reader found no `proxy → auth` edge; it no longer reads the source: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        let mut why = String::new();
        for pair in cycle.windows(2) {
            let files: Vec<_> = graph[&pair[0]][&pair[1]].iter().collect();
            why.push_str(&format!("\n  {} → {} in {files:?}", pair[0], pair[1]));
        }
        panic!("import cycle {}:{why}", cycle.join(" → "));
    }
}

/// Lines of a non-test source file, its inline `mod tests` not counted.
const MAX_SOURCE_LINES: usize = 600;

#[test]
fn no_source_file_is_over_the_line_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("lib.rs"), src.join("main.rs")];
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_non_test_files(&path.join("mod.rs"), &mut files);
        } else if !files.contains(&path) {
            collect_non_test_files(&path, &mut files);
        }
    }
    assert!(files.len() > 50, "the walk found only {files:?}");
    let too_long: Vec<(String, usize)> = files
        .iter()
        .map(|file| {
            let code = fs::read_to_string(file).unwrap();
            let lines = without_inline_tests(&code).lines().count();
            (
                file.strip_prefix(&src).unwrap().display().to_string(),
                lines,
            )
        })
        .filter(|(_, lines)| *lines > MAX_SOURCE_LINES)
        .collect();
    assert!(
        too_long.is_empty(),
        "over {MAX_SOURCE_LINES} lines (tests aside): {too_long:?}"
    );
}

#[test]
fn the_reader_sees_paths_groups_and_skips_comments() {
    let code = "use crate::{auth::Grant, store::{Role, User}, types};\n\
                // crate::server is only mentioned\n\
                let x = crate::config::load(); /* */\n\
                #[cfg(test)]\nmod tests { use crate::app::App; }\n";
    let names = modules_named(code);
    let expected: BTreeSet<String> = ["auth", "store", "types", "config"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn a_cycle_is_found_and_a_chain_is_not() {
    let mut graph = Graph::new();
    let mut edge = |from: &str, to: &str| {
        graph
            .entry(from.to_owned())
            .or_default()
            .entry(to.to_owned())
            .or_default();
    };
    edge("a", "b");
    edge("b", "c");
    assert_eq!(find_cycle(&graph), None);
    graph
        .entry("c".to_owned())
        .or_default()
        .entry("a".to_owned())
        .or_default();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

/// Module → module it names → the files that name it.
fn module_graph(src: &Path) -> Graph {
    let mut modules = BTreeMap::new();
    for entry in fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        if path.is_dir() {
            collect_non_test_files(&path.join("mod.rs"), &mut files);
        } else {
            collect_non_test_files(&path, &mut files);
        }
        modules.insert(name, files);
    }
    let mut graph = Graph::new();
    for (module, files) in &modules {
        let edges = graph.entry(module.clone()).or_default();
        for file in files {
            let code = fs::read_to_string(file).unwrap();
            for named in modules_named(&code) {
                if &named != module && modules.contains_key(&named) {
                    edges
                        .entry(named)
                        .or_default()
                        .insert(file.strip_prefix(src).unwrap_or(file).to_owned());
                }
            }
        }
    }
    graph
}

/// `file` and the files of the submodules it declares, leaving out those declared under
/// `#[cfg(test)]`.
fn collect_non_test_files(file: &Path, out: &mut Vec<PathBuf>) {
    let Ok(code) = fs::read_to_string(file) else {
        return;
    };
    out.push(file.to_owned());
    // Submodules of `x/mod.rs` live in `x/`; those of `x/y.rs` in `x/y/`.
    let dir = if file.file_name().is_some_and(|n| n == "mod.rs") {
        file.parent().unwrap().to_owned()
    } else {
        file.with_extension("")
    };
    let mut test_only = false;
    for line in code.lines().map(str::trim) {
        if line == "#[cfg(test)]" {
            test_only = true;
            continue;
        }
        let declared = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("pub(crate) mod "))
            .or_else(|| line.strip_prefix("mod "))
            .and_then(|rest| rest.strip_suffix(';'));
        if let (Some(name), false) = (declared, test_only) {
            let single = dir.join(format!("{name}.rs"));
            if single.exists() {
                collect_non_test_files(&single, out);
            } else {
                collect_non_test_files(&dir.join(name).join("mod.rs"), out);
            }
        }
        if !line.starts_with("#[") {
            test_only = false;
        }
    }
}

/// `code` up to its inline `#[cfg(test)] mod tests`, by the crate's convention the file's end.
fn without_inline_tests(code: &str) -> &str {
    code.split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default()
}

/// The top-level modules `code` names through `crate::`, outside comments and outside an
/// inline `#[cfg(test)] mod tests`.
fn modules_named(code: &str) -> BTreeSet<String> {
    let text: String = without_inline_tests(code)
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // A `use crate::{a::b, c, d::{e, f}}` group: the names at depth one.
            let mut depth = 1;
            let mut word = String::new();
            let mut at_item_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && (c.is_ascii_alphanumeric() || c == '_') {
                    word.push(c);
                    continue;
                }
                if !word.is_empty() && at_item_start {
                    names.insert(std::mem::take(&mut word));
                    at_item_start = false;
                }
                word.clear();
                if depth == 1 && c == ',' {
                    at_item_start = true;
                }
            }
            if !word.is_empty() && at_item_start {
                names.insert(word);
            }
        } else {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(word);
        }
    }
    names
}

/// A cycle as the list of modules walked, first repeated at the end; `None` if there is none.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}
