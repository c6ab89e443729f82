//! Target `config_toml`: loading a TOML file through figment into the typed [`Config`], as
//! `load` does for the config file (the environment layer left out).

use figment::Figment;
use figment::providers::{Format, Toml};

use crate::config::{Config, ConfigError, load_from_figment};

fn load(toml: &str) -> Result<Config, ConfigError> {
    load_from_figment(&Figment::from(Toml::string(toml)))
}

/// Input: the text of a config file (bytes that are not UTF-8 are replaced).
pub fn config_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let config = match load(&text) {
        Ok(config) => config,
        Err(error) => {
            assert!(!error.problems.is_empty(), "an error without a problem");
            for problem in &error.problems {
                // Every problem names its key (`config` for the file itself) on one line.
                let key = &problem.key;
                assert!(!key.is_empty(), "{problem:?}");
                // (Keys that are not bare are quoted, and may hold anything.)
                assert!(
                    key.contains('"')
                        || !key.starts_with('.') && !key.ends_with('.') && !key.contains(".."),
                    "malformed key in {problem:?}"
                );
                assert!(!problem.message.is_empty(), "{problem:?}");
                assert!(!problem.message.contains('\n'), "{problem:?}");
            }
            return;
        }
    };
    // Accepted: no two routes answer for the same host and prefix (the table would only ever
    // use the first).
    let mut slots: Vec<(Option<&str>, &str)> = Vec::new();
    for route in &config.routes {
        assert!(route.prefix.starts_with('/'), "{:?}", route.prefix);
        let slot = (route.host.as_deref(), route.prefix.trim_end_matches('/'));
        assert!(!slots.contains(&slot), "two routes for {slot:?}");
        slots.push(slot);
        assert!(
            config.upstreams.iter().any(|u| u.name == route.upstream),
            "route to unknown upstream {:?}",
            route.upstream
        );
    }
    // `check-config` prints the effective config as TOML; saved as a file, it loads back
    // to the same config.
    let printed = toml::to_string_pretty(&config).expect("an accepted config prints");
    let again = match load(&printed) {
        Ok(again) => again,
        Err(error) => {
            // Secrets print as `<redacted>`, which a rule may refuse (a 12-character minimum
            // for `bootstrap.admin_password`): only those keys may fail.
            let mut redacted = Vec::new();
            let tree: toml::Value = toml::from_str(&printed).expect("printed TOML parses");
            redacted_keys(&tree, String::new(), &mut redacted);
            for problem in &error.problems {
                assert!(
                    redacted.contains(&problem.key),
                    "printed config does not load back:\n{error}\n---\n{printed}"
                );
            }
            return;
        }
    };
    let reprinted = toml::to_string_pretty(&again).expect("prints again");
    assert_eq!(
        reprinted, printed,
        "printed config changes when loaded back"
    );
}

/// The dotted keys (`a.b`, `a[0].b`) whose printed value is a redacted secret.
fn redacted_keys(value: &toml::Value, key: String, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) if s.contains("<redacted>") => out.push(key),
        toml::Value::Table(table) => {
            for (name, value) in table {
                let key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                redacted_keys(value, key, out);
            }
        }
        toml::Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                redacted_keys(value, format!("{key}[{i}]"), out);
            }
        }
        _ => {}
    }
}
