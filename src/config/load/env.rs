//! The `MEIRO_GATE_<SECTION>__<KEY>` environment layer.

use std::ffi::OsString;

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

const ENV_PREFIX: &str = "MEIRO_GATE_";

const ENV_CONFIG_KEY: &str = "config";

/// `MEIRO_GATE_TEST_*` belongs to the test suites (e.g. `MEIRO_GATE_TEST_POSTGRES_URL`).
const ENV_TEST_PREFIX: &str = "test_";

const ENV_SOURCE_NAME: &str = "`MEIRO_GATE_` environment variable(s)";

/// The `MEIRO_GATE_<SECTION>__<KEY>` variables, each value kept as the exact string that was set.
/// figment's own `Env` provider guesses types (`0123456789012` becomes a number without its
/// leading zero, quotes are stripped, whitespace trimmed), which would silently change a
/// password; the reader below converts strings itself.
pub(super) struct EnvLayer(pub(super) Vec<(OsString, OsString)>);

impl EnvLayer {
    pub(super) fn from_process() -> Self {
        Self(std::env::vars_os().collect())
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE_NAME)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut vars = Vec::new();
        for (name, value) in &self.0 {
            let name = name.to_string_lossy();
            let Some(key) = name
                .get(..ENV_PREFIX.len())
                .filter(|prefix| prefix.eq_ignore_ascii_case(ENV_PREFIX))
                .map(|_| name[ENV_PREFIX.len()..].to_ascii_lowercase())
            else {
                continue;
            };
            if key.is_empty()
                || key == ENV_CONFIG_KEY
                || key.starts_with(ENV_TEST_PREFIX)
                || is_kubernetes_service_link(&key)
            {
                continue;
            }
            let value = value
                .to_str()
                .ok_or_else(|| format!("environment variable {name} is not valid UTF-8"))?;
            vars.push((key, value.to_owned()));
        }
        // Sorted, so `X` is always seen before `X__Y` and a clash is reported, not order-dependent.
        vars.sort();
        let mut root = Dict::new();
        for (key, value) in vars {
            let parts: Vec<&str> = key.split("__").collect();
            let (leaf, parents) = parts.split_last().unwrap_or((&"", &[]));
            let mut dict = &mut root;
            for (depth, part) in parents.iter().enumerate() {
                let entry = dict
                    .entry((*part).to_owned())
                    .or_insert_with(|| Value::from(Dict::new()));
                let Value::Dict(_, inner) = entry else {
                    let (this, other) = (parts.join("."), parts[..=depth].join("."));
                    let (this, other) = (env_var_name(&this), env_var_name(&other));
                    return Err(format!("{this} conflicts with {other}").into());
                };
                dict = inner;
            }
            dict.insert((*leaf).to_owned(), Value::from(value));
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Kubernetes gives every pod `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_8080_TCP_ADDR`, … for
/// each Service in its namespace; a Service named `meiro-gate` would otherwise stop the gateway
/// with "unknown key". No config section is called `service_*` or `port*`, so a typo of a real
/// key is still reported.
fn is_kubernetes_service_link(key: &str) -> bool {
    key == "service_host"
        || key == "service_port"
        || key.starts_with("service_port_")
        || key == "port"
        || key.starts_with("port_")
}

pub(super) fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}
