//! Which keys of a reloaded config differ from the running one where a reload cannot apply
//! them. Compares the serialized forms, so a key added to [`Config`] is covered without a
//! list to maintain; secrets serialize redacted and are compared by value separately.

use serde_json::Value;

use crate::config::Config;

/// Dotted keys (`server.listen`, `store.url`) whose value in `new` differs from `effective`
/// (the running config with the live parts of `new` already applied). Never holds values.
pub fn restart_needed(effective: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    match (serde_json::to_value(effective), serde_json::to_value(new)) {
        (Ok(old), Ok(new)) => differing("", &old, &new, &mut keys),
        // Not expected (every field serializes); say so rather than claim nothing changed.
        _ => keys.push("(config could not be compared)".to_owned()),
    }
    let secrets = [
        ("store.url", &effective.store.url, &new.store.url),
        (
            "bootstrap.admin_password",
            &effective.bootstrap.admin_password,
            &new.bootstrap.admin_password,
        ),
        (
            "mail.smtp_url",
            &effective.mail.smtp_url,
            &new.mail.smtp_url,
        ),
        (
            "okta.client_secret",
            &effective.okta.client_secret,
            &new.okta.client_secret,
        ),
    ];
    for (key, old, new) in secrets {
        if old.expose() != new.expose() && !keys.iter().any(|k| k == key) {
            keys.push(key.to_owned());
        }
    }
    keys
}

/// Walks tables key by key; anything else (values, arrays) is compared whole.
fn differing(path: &str, old: &Value, new: &Value, keys: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            for (name, value) in old {
                let key = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                differing(&key, value, new.get(name).unwrap_or(&Value::Null), keys);
            }
            for (name, _) in new.iter().filter(|(name, _)| !old.contains_key(*name)) {
                keys.push(if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                });
            }
        }
        _ if old != new => keys.push(path.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format, Toml};

    use super::*;

    fn config(extra: &str) -> Config {
        let toml = format!("[server]\npublic_url = \"http://gate.test\"\n{extra}");
        crate::config::load_from_figment(&Figment::from(Toml::string(&toml))).unwrap()
    }

    #[test]
    fn names_changed_keys_and_secrets_without_their_values() {
        let old = config("");
        assert!(restart_needed(&old, &old.clone()).is_empty());
        let new = config(
            "drain_timeout = \"1s\"\n[bootstrap]\nadmin_email = \"a@example.com\"\n\
             admin_password = \"a long bootstrap password\"\n[mail]\nsmtp_timeout = \"3s\"",
        );
        let mut keys = restart_needed(&old, &new);
        keys.sort();
        assert_eq!(
            keys,
            [
                "bootstrap.admin_email",
                "bootstrap.admin_password",
                "mail.smtp_timeout",
                "server.drain_timeout"
            ]
        );
        // Only the password differs: it serializes redacted either way, and is still named.
        let other = config(
            "drain_timeout = \"1s\"\n[bootstrap]\nadmin_email = \"a@example.com\"\n\
             admin_password = \"another bootstrap password\"\n[mail]\nsmtp_timeout = \"3s\"",
        );
        assert_eq!(restart_needed(&new, &other), ["bootstrap.admin_password"]);
        assert!(!restart_needed(&new, &other).concat().contains("another"));
    }
}
