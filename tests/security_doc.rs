//! `docs/security.md` names, for every attack class, the test that pins its defence. This keeps
//! those names true: each one must be a test function somewhere in `src/` or `tests/`, so a
//! renamed or deleted test cannot leave the threat model pointing at nothing.

use std::path::Path;

/// Backticked names in the document that look like test functions (`a_b_c_d`), with an
/// optional module path (`proxy::tests::a_b_c`), reduced to the function name.
fn named_tests(doc: &str) -> Vec<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| {
            let name = quoted.rsplit("::").next()?;
            let looks_like_a_test = name.matches('_').count() >= 3
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            looks_like_a_test.then(|| name.to_owned())
        })
        .collect()
}

fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_test_the_threat_model_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    let mut code = String::new();
    sources(&root.join("src"), &mut code);
    sources(&root.join("tests"), &mut code);
    let names = named_tests(&doc);
    assert!(
        names.len() > 20,
        "the threat model names its tests: {names:?}"
    );
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !code.contains(&format!("fn {name}(")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/security.md names tests that do not exist: {missing:?}"
    );
}
