//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) and every fixed crash
//! reproducer (`fuzz/regressions/<target>/`) through the target functions the fuzzers run, so
//! the invariants they check hold on every `cargo test`, without a fuzzer (fuzz/README.md).

use std::path::Path;

/// Runs `target` on every file of the target's corpus and regression directories.
fn replay(name: &str, target: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "{} fails (see the panic above)",
                file.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus for fuzz target {name}");
}

/// One line per target: its name (the fuzz binary's and the corpus directory's) and function.
macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name), meiro_gate::fuzzing::$name);
            }
        )*

        /// Every target of `meiro_gate::fuzzing::TARGETS` is replayed here.
        #[test]
        fn every_target_is_replayed() {
            let replayed = [$(stringify!($name)),*];
            for (name, _) in meiro_gate::fuzzing::TARGETS {
                assert!(replayed.contains(name), "add `{name}` to tests/fuzz_corpora.rs");
            }
        }
    };
}

targets! {
    framing_watch,
    chunked,
    path_and_route,
    token_extraction,
    jwt_header,
    cookies,
    config_toml,
    host_authority,
    header_rewrite,
    ws_frames,
    forwarded_for,
    proxy_header,
}
