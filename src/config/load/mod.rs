//! Finds the config file, layers defaults < TOML < `MEIRO_GATE_*` environment, and turns the
//! untyped tree into [`Config`], collecting every problem (with its dotted key) instead of
//! stopping at the first.

mod auth;
mod convert;
mod cors;
mod env;
mod log;
mod mail;
mod okta;
mod reader;
mod routes;
mod server;
mod store;
#[cfg(test)]
mod tests;
mod upstreams;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Value};

use super::{AdminConfig, Config};
use auth::{read_auth, read_bootstrap};
use convert::socket_addr;
use cors::read_cors;
use env::EnvLayer;
use log::{read_audit, read_log};
use mail::read_mail;
use okta::read_okta;
use reader::{Reader, Section};
use routes::read_route;
use server::{read_limits, read_server};
use store::read_store;
use upstreams::read_upstream;

/// Names the file; not a setting itself.
const ENV_CONFIG_VAR: &str = "MEIRO_GATE_CONFIG";

const DEFAULT_FILE: &str = "config/meiro-gate.toml";

/// One thing wrong with the configuration. `key` is the full dotted path
/// (`auth.access_token_ttl`, `upstreams[0].instances[1]`), or `config` for the file itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every problem found, displayed one per line as `<key>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.problems))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

fn lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

impl From<Problem> for ConfigError {
    fn from(problem: Problem) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

/// Loads the configuration from `path`, or `$MEIRO_GATE_CONFIG`, or `config/meiro-gate.toml` in
/// the current directory if it exists (else defaults only), overlaid by the environment.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let file = config_file(
        path,
        std::env::var_os(ENV_CONFIG_VAR),
        Path::new(DEFAULT_FILE),
    )?;
    load_from_figment(&layers(file.as_deref(), EnvLayer::from_process()))
}

/// The file [`load`] reads for `path` (the same rules), if there is one: what `serve` watches.
pub fn file(path: Option<&Path>) -> Option<PathBuf> {
    config_file(
        path,
        std::env::var_os(ENV_CONFIG_VAR),
        Path::new(DEFAULT_FILE),
    )
    .ok()
    .flatten()
}

/// Chooses the file: an explicitly named one must exist; the conventional one is optional.
fn config_file(
    explicit: Option<&Path>,
    from_env: Option<OsString>,
    default: &Path,
) -> Result<Option<PathBuf>, Problem> {
    let (path, origin) = match (explicit, from_env) {
        (Some(path), _) => (path.to_path_buf(), String::new()),
        (None, Some(path)) if !path.is_empty() => {
            (PathBuf::from(path), format!(" (named by {ENV_CONFIG_VAR})"))
        }
        _ => return Ok(default.is_file().then(|| default.to_path_buf())),
    };
    if path.is_file() {
        Ok(Some(path))
    } else {
        let message = format!("file not found: {}{origin}", path.display());
        Err(Problem::new("config", message))
    }
}

fn layers(file: Option<&Path>, env: EnvLayer) -> Figment {
    let figment = match file {
        Some(file) => Figment::from(Toml::file_exact(file)),
        None => Figment::new(),
    };
    figment.merge(env)
}

/// Builds the [`Config`] from any figment (the file and environment layers for [`load`], a
/// string for tests), applying defaults and every validation rule.
pub fn load_from_figment(figment: &Figment) -> Result<Config, ConfigError> {
    let tree = figment.find_value("").map_err(|error| ConfigError {
        problems: error
            .into_iter()
            .map(|e| Problem::new("config", one_line(&e.to_string())))
            .collect(),
    })?;
    let Value::Dict(_, root) = tree else {
        return Err(Problem::new("config", "expected a table at the top level").into());
    };
    let reader = Reader {
        figment,
        problems: RefCell::default(),
    };
    let config = read_config(&reader, &root);
    let problems = reader.problems.into_inner();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { problems })
    }
}

/// Parse errors come with a multi-line source excerpt (`12 | key = = 1`); keep the prose so that
/// every problem stays on one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.contains('|'))
        .collect();
    lines.join("; ")
}

pub(super) const POSITIVE: &str = "must be greater than zero";

pub(super) const MISSING: &str = "missing (required)";

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn read_config(reader: &Reader<'_>, root: &Dict) -> Config {
    let mut root = Section {
        reader,
        path: String::new(),
        dict: Some(root),
        read: Vec::new(),
    };
    let server = read_server(root.section("server"));
    let admin = AdminConfig {
        listen: root.section("admin").get(
            "listen",
            SocketAddr::from(([127, 0, 0, 1], 9090)),
            socket_addr,
        ),
    };
    let store = read_store(root.section("store"));
    let auth = read_auth(root.section("auth"));
    let bootstrap = read_bootstrap(root.section("bootstrap"));
    let limits = read_limits(root.section("limits"));
    let log = read_log(root.section("log"));
    let mail = read_mail(root.section("mail"));
    let okta = read_okta(root.section("okta"));
    let audit = read_audit(root.section("audit"));
    let cors = root.has("cors").then(|| read_cors(root.section("cors")));

    let mut upstreams = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for section in root.tables("upstreams") {
        let name_key = section.key("name");
        let upstream = read_upstream(section);
        if !upstream.name.is_empty() {
            if let Some(first) = names.get(&upstream.name) {
                let message = format!("duplicate upstream name {:?} (also {first})", upstream.name);
                reader.problem(name_key, message);
            } else {
                names.insert(upstream.name.clone(), name_key);
            }
        }
        upstreams.push(upstream);
    }

    if let Some(up) = &auth.upstream
        && !up.upstream.is_empty()
        && !names.contains_key(&up.upstream)
    {
        reader.problem(
            "auth.upstream.upstream",
            format!("unknown upstream {:?}", up.upstream),
        );
    }

    let mut routes = Vec::new();
    // A prefix may appear once per host (and once for any host).
    let mut prefixes: HashMap<(Option<String>, String), String> = HashMap::new();
    for section in root.tables("routes") {
        let (prefix_key, upstream_key) = (section.key("prefix"), section.key("upstream"));
        let route = read_route(section);
        if !route.upstream.is_empty() && !names.contains_key(&route.upstream) {
            reader.problem(
                upstream_key,
                format!("unknown upstream {:?}", route.upstream),
            );
        }
        if !route.prefix.is_empty() {
            // Keyed as the route table matches it: `/api` and `/api/` are the same prefix, and
            // a second route for it could never be chosen.
            let slot = (
                route.host.clone(),
                route.prefix.trim_end_matches('/').to_owned(),
            );
            if let Some(first) = prefixes.get(&slot) {
                let message = format!("duplicate prefix {:?} (also {first})", route.prefix);
                reader.problem(prefix_key, message);
            } else {
                prefixes.insert(slot, prefix_key);
            }
        }
        routes.push(route);
    }

    Config {
        server,
        admin,
        store,
        auth,
        bootstrap,
        limits,
        log,
        mail,
        okta,
        audit,
        cors,
        upstreams,
        routes,
    }
}
