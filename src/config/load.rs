//! Finds the config file, layers defaults < TOML < `MEIRO_GATE_*` environment, and turns the
//! untyped tree into [`Config`], collecting every problem (with its dotted key) instead of
//! stopping at the first.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use url::Url;

use super::values::{ByteSize, duration_serde};
use super::{
    AdminConfig, AuditConfig, AuthConfig, AuthMode, AuthUpstreamConfig, Balance, BootstrapConfig,
    Config, CorsConfig, HealthCheckConfig, LimitsConfig, LogConfig, MailConfig, MailTransport,
    OktaClientAuth, OktaConfig, RouteConfig, ServerConfig, SigningAlgorithm, StoreConfig,
    ThrottleConfig, TlsConfig, UpstreamConfig, UpstreamProtocol,
};
use crate::types::Secret;

const ENV_PREFIX: &str = "MEIRO_GATE_";
/// Names the file; not a setting itself.
const ENV_CONFIG_VAR: &str = "MEIRO_GATE_CONFIG";
const ENV_CONFIG_KEY: &str = "config";
/// `MEIRO_GATE_TEST_*` belongs to the test suites (e.g. `MEIRO_GATE_TEST_POSTGRES_URL`).
const ENV_TEST_PREFIX: &str = "test_";
const ENV_SOURCE_NAME: &str = "`MEIRO_GATE_` environment variable(s)";
const DEFAULT_FILE: &str = "config/meiro-gate.toml";

/// Keys documented in operations.md that belong to later versions: said so in the "unknown key"
/// message, so an operator who copied the documented file knows it is not a typo.
const NOT_YET: &[&str] = &[];

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

/// The `MEIRO_GATE_<SECTION>__<KEY>` variables, each value kept as the exact string that was set.
/// figment's own `Env` provider guesses types (`0123456789012` becomes a number without its
/// leading zero, quotes are stripped, whitespace trimmed), which would silently change a
/// password; the reader below converts strings itself.
struct EnvLayer(Vec<(OsString, OsString)>);

impl EnvLayer {
    fn from_process() -> Self {
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

fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
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

/// Owns the problem list shared by every [`Section`].
struct Reader<'a> {
    figment: &'a Figment,
    problems: RefCell<Vec<Problem>>,
}

impl Reader<'_> {
    fn problem(&self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.borrow_mut().push(Problem::new(key, message));
    }

    /// A problem with a value as written. Names the variable when the value came from the
    /// environment: operators look in the file first.
    fn bad_value(&self, key: &str, value: &Value, message: &str) {
        let from_env = self
            .figment
            .get_metadata(value.tag())
            .is_some_and(|metadata| metadata.name.contains("environment variable"));
        if from_env && !key.contains('[') {
            self.problem(key, format!("{message} (from {})", env_var_name(key)));
        } else {
            self.problem(key, message);
        }
    }
}

/// A view of one table. Records which keys were read; the rest are reported as unknown when
/// it is dropped, so a section can't forget to check.
struct Section<'a> {
    reader: &'a Reader<'a>,
    path: String,
    /// `None` when absent, or not a table (already reported).
    dict: Option<&'a Dict>,
    read: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn key(&self, name: &str) -> String {
        let name = toml_key(name);
        if self.path.is_empty() {
            name
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn take(&mut self, name: &'static str) -> Option<&'a Value> {
        self.read.push(name);
        self.dict?
            .get(name)
            .filter(|value| !matches!(value, Value::Empty(..)))
    }

    /// Is `name` set (to anything but empty)? Reads nothing: an optional table is then taken
    /// with [`Section::section`].
    fn has(&self, name: &str) -> bool {
        self.dict
            .and_then(|d| d.get(name))
            .is_some_and(|value| !matches!(value, Value::Empty(..)))
    }

    fn convert<T>(&self, name: &str, value: &Value, convert: Convert<T>) -> Option<T> {
        convert(value)
            .map_err(|message| self.reader.bad_value(&self.key(name), value, &message))
            .ok()
    }

    fn opt<T>(&mut self, name: &'static str, convert: Convert<T>) -> Option<T> {
        let value = self.take(name)?;
        self.convert(name, value, convert)
    }

    /// The value, or `default` when absent or invalid (invalid is reported).
    fn get<T>(&mut self, name: &'static str, default: T, convert: Convert<T>) -> T {
        self.opt(name, convert).unwrap_or(default)
    }

    fn required<T>(&mut self, name: &'static str, convert: Convert<T>) -> Option<T> {
        match self.take(name) {
            Some(value) => self.convert(name, value, convert),
            None => {
                self.problem(name, MISSING);
                None
            }
        }
    }

    fn problem(&self, name: &str, message: impl Into<String>) {
        self.reader.problem(self.key(name), message);
    }

    /// Reports `message` on `name` unless `ok`.
    fn check(&self, name: &str, ok: bool, message: &str) {
        if !ok {
            self.problem(name, message);
        }
    }

    fn section(&mut self, name: &'static str) -> Section<'a> {
        let path = self.key(name);
        let dict = match self.take(name) {
            None => None,
            Some(Value::Dict(_, dict)) => Some(dict),
            Some(other) => {
                let message = format!("expected a table, found {}", kind(other));
                self.reader.bad_value(&path, other, &message);
                None
            }
        };
        Section {
            reader: self.reader,
            path,
            dict,
            read: Vec::new(),
        }
    }

    /// An array of tables (`[[name]]`); entries that are not tables are reported and skipped.
    fn tables(&mut self, name: &'static str) -> Vec<Section<'a>> {
        let path = self.key(name);
        let items = match self.take(name) {
            None => return Vec::new(),
            Some(Value::Array(_, items)) => items,
            Some(other) => {
                let message = format!(
                    "expected an array of tables ([[{name}]]), found {}",
                    kind(other)
                );
                self.reader.bad_value(&path, other, &message);
                return Vec::new();
            }
        };
        let mut sections = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let path = format!("{path}[{index}]");
            match item {
                Value::Dict(_, dict) => sections.push(Section {
                    reader: self.reader,
                    path,
                    dict: Some(dict),
                    read: Vec::new(),
                }),
                other => {
                    let message = format!("expected a table, found {}", kind(other));
                    self.reader.bad_value(&path, other, &message);
                }
            }
        }
        sections
    }

    /// A required, non-empty array; each element converted and reported under `name[i]`.
    fn required_list<T>(&mut self, name: &'static str, convert: Convert<T>) -> Vec<T> {
        let key = self.key(name);
        let items = match self.take(name) {
            None => {
                self.reader.problem(key, MISSING);
                return Vec::new();
            }
            Some(Value::Array(_, items)) => items,
            Some(other) => {
                let message = format!("expected an array, found {}", kind(other));
                self.reader.bad_value(&key, other, &message);
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.reader.problem(key.clone(), "must not be empty");
        }
        let mut converted = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match convert(item) {
                Ok(value) => converted.push(value),
                Err(message) => self
                    .reader
                    .bad_value(&format!("{key}[{index}]"), item, &message),
            }
        }
        converted
    }
}

impl Drop for Section<'_> {
    fn drop(&mut self) {
        let Some(dict) = self.dict else { return };
        for (name, value) in dict {
            if self.read.contains(&name.as_str()) {
                continue;
            }
            let key = self.key(name);
            let message = if NOT_YET.contains(&without_indices(&key).as_str()) {
                "unknown key (not supported in this version)"
            } else {
                "unknown key"
            };
            self.reader.bad_value(&key, value, message);
        }
    }
}

/// A key as TOML writes it: bare when it can be, else quoted, so that an unknown key `""` is
/// not reported under an empty name, nor `"a.b"` as the nested `a.b`.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// `upstreams[3].retries` -> `upstreams.retries`.
fn without_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

// ---- conversions: each turns one untyped value into a typed one or an error message ----

/// Messages never quote the value of a secret; the secret readers only use [`text`], whose
/// errors name the type alone.
type Convert<T> = fn(&Value) -> Result<T, String>;

fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(..) => "a string",
        Value::Char(..) => "a character",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "an empty value",
        Value::Dict(..) => "a table",
        Value::Array(..) => "an array",
    }
}

/// Numbers and booleans are accepted as their text: `cookie_name = 123` is a name.
fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(_, s) => Ok(s.clone()),
        Value::Char(_, c) => Ok(c.to_string()),
        Value::Bool(_, b) => Ok(b.to_string()),
        Value::Num(_, n) => Ok(match (n.to_u128(), n.to_i128()) {
            (Some(u), _) => u.to_string(),
            (None, Some(i)) => i.to_string(),
            (None, None) => n.to_f64().unwrap_or_default().to_string(),
        }),
        other => Err(format!("expected a string, found {}", kind(other))),
    }
}

fn non_empty_text(value: &Value) -> Result<String, String> {
    match text(value)? {
        text if text.is_empty() => Err("must not be empty".to_owned()),
        text => Ok(text),
    }
}

fn route_prefix(value: &Value) -> Result<String, String> {
    let prefix = text(value)?;
    if !prefix.starts_with('/') {
        return Err("must start with \"/\"".to_owned());
    }
    // Requests are routed on their normalized path without segment parameters, so a prefix
    // written any other way could never match.
    let trimmed = prefix.trim_end_matches('/');
    let written_plainly = trimmed.split('/').skip(1).all(|segment| {
        !matches!(segment, "" | "." | "..") && !segment.contains([';', '%', '\\', '?', '#'])
    });
    if written_plainly {
        Ok(prefix)
    } else {
        Err("must be a plain path: no empty, \".\" or \"..\" segments, and no \";\", \"%\", \"\\\", \"?\" or \"#\"".to_owned())
    }
}

fn secret(value: &Value) -> Result<Secret, String> {
    text(value).map(Secret::new)
}

fn flag(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(_, b) => Ok(*b),
        Value::String(_, s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Value::String(_, s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Value::String(_, s) => Err(format!("expected true or false, found {s:?}")),
        other => Err(format!("expected true or false, found {}", kind(other))),
    }
}

fn whole<T: TryFrom<u128>>(value: &Value) -> Result<T, String> {
    const EXPECTED: &str = "expected a non-negative whole number";
    let number = match value {
        Value::Num(_, n) => n
            .to_u128()
            .or_else(|| n.to_i128().and_then(|i| u128::try_from(i).ok()))
            .ok_or_else(|| EXPECTED.to_owned())?,
        Value::String(_, s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{EXPECTED}, found {s:?}"))?,
        other => return Err(format!("{EXPECTED}, found {}", kind(other))),
    };
    T::try_from(number).map_err(|_| format!("{number} is too large"))
}

fn duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::String(_, s) => duration_serde::parse(s),
        Value::Num(..) => Err("a number has no unit; write a unit, e.g. \"30s\"".to_owned()),
        other => Err(format!(
            "expected a duration such as \"30s\", found {}",
            kind(other)
        )),
    }
}

fn socket_addr(value: &Value) -> Result<SocketAddr, String> {
    let text = text(value)?;
    text.trim().parse().map_err(|_| {
        format!(
            "invalid address {text:?}: expected an IP address and port such as \
             \"127.0.0.1:8080\" (host names are not resolved)"
        )
    })
}

fn url(value: &Value) -> Result<Url, String> {
    let text = text(value)?;
    Url::parse(text.trim()).map_err(|e| format!("invalid URL {text:?}: {e}"))
}

/// Where browsers and clients reach the gateway.
fn web_url(value: &Value) -> Result<Url, String> {
    let url = url(value)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(url)
}

/// An upstream base URL: the proxy appends the request path, so it must be bare.
fn upstream_url(value: &Value) -> Result<Url, String> {
    let url = url(value)?;
    match url.scheme() {
        "http" => {}
        "https" => {}
        _ => return Err("must be an http:// or https:// URL".to_owned()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".to_owned());
    }
    if url.path() != "/" {
        return Err(format!("must not have a path (found {:?})", url.path()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(url)
}

fn byte_size(value: &Value) -> Result<ByteSize, String> {
    match value {
        Value::String(_, s) => s.parse(),
        _ => whole::<u64>(value).map(ByteSize::new),
    }
}

fn path(value: &Value) -> Result<PathBuf, String> {
    non_empty_text(value).map(PathBuf::from)
}

fn auth_mode(value: &Value) -> Result<AuthMode, String> {
    match text(value)?.as_str() {
        "local" => Ok(AuthMode::Local),
        "upstream" => Ok(AuthMode::Upstream),
        other => Err(format!(
            "unknown mode {other:?}; expected \"local\" or \"upstream\""
        )),
    }
}

/// Exactly the JWS name: `alg` values are case-sensitive (RFC 7515 §4.1.1).
fn signing_algorithm(value: &Value) -> Result<SigningAlgorithm, String> {
    let name = text(value)?;
    SigningAlgorithm::parse(&name)
        .ok_or_else(|| format!("unknown algorithm {name:?}; expected \"EdDSA\" or \"ES256\""))
}

fn balance(value: &Value) -> Result<Balance, String> {
    match text(value)?.as_str() {
        "round_robin" => Ok(Balance::RoundRobin),
        "least_request" => Ok(Balance::LeastRequest),
        other => Err(format!(
            "unknown balance {other:?}; expected \"round_robin\" or \"least_request\""
        )),
    }
}

// ---- sections ----

const POSITIVE: &str = "must be greater than zero";
const MISSING: &str = "missing (required)";

fn secs(n: u64) -> Duration {
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

fn read_audit(mut s: Section<'_>) -> AuditConfig {
    let retention = s.get("retention", secs(90 * 24 * 3600), duration);
    s.check("retention", !retention.is_zero(), POSITIVE);
    AuditConfig { retention }
}

fn read_server(mut s: Section<'_>) -> ServerConfig {
    let listen = s.get(
        "listen",
        SocketAddr::from(([127, 0, 0, 1], 8080)),
        socket_addr,
    );
    let public_url = match s.opt("public_url", web_url) {
        Some(url) => url,
        None => default_public_url(listen).unwrap_or_else(|| {
            s.problem(
                "public_url",
                format!("cannot derive a default from server.listen {listen}; set it explicitly"),
            );
            fallback_url()
        }),
    };
    let frontend_url = s
        .opt("frontend_url", web_url)
        .unwrap_or_else(|| public_url.clone());
    let drain_timeout = s.get("drain_timeout", secs(30), duration);
    let access_log = s.get("access_log", true, flag);
    let config_watch_interval = s.get("config_watch_interval", secs(2), duration);
    let worker_threads = s.opt("worker_threads", whole::<usize>);
    let underscores_in_headers = s.get("underscores_in_headers", true, flag);
    if let Some(n) = worker_threads {
        s.check("worker_threads", n >= 1, "must be at least 1");
    }
    let tls = s.has("tls").then(|| {
        let mut t = s.section("tls");
        let cert = t.required("cert", path);
        let key = t.required("key", path);
        TlsConfig {
            cert: cert.unwrap_or_default(),
            key: key.unwrap_or_default(),
        }
    });
    ServerConfig {
        listen,
        public_url,
        frontend_url,
        drain_timeout,
        access_log,
        worker_threads,
        underscores_in_headers,
        tls,
        config_watch_interval,
    }
}

/// `http://<listen>`, with a wildcard address replaced by loopback so the URL is reachable.
fn default_public_url(listen: SocketAddr) -> Option<Url> {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    // `SocketAddr::new` drops any IPv6 zone id (URLs cannot express one), so this parses; it
    // stays fallible because `listen` is operator input and must never cause a panic.
    Url::parse(&format!("http://{}", SocketAddr::new(ip, listen.port()))).ok()
}

/// Placeholder where a URL is needed but the real one was invalid; the problem is reported, so
/// this never reaches a returned `Config`.
fn fallback_url() -> Url {
    Url::parse("http://127.0.0.1/").expect("constant URL is valid")
}

fn read_store(mut s: Section<'_>) -> StoreConfig {
    let url = s.get("url", "sqlite://data/meiro-gate.db".to_owned(), text);
    // The message never repeats the URL: it may carry a password.
    if let Err(why) = super::store_url::check(&url) {
        s.problem("url", why);
    }
    let timeout = s.get("timeout", super::store_url::DEFAULT_TIMEOUT, duration);
    s.check("timeout", !timeout.is_zero(), POSITIVE);
    StoreConfig {
        url: Secret::url(url),
        timeout,
    }
}

fn read_mail(mut s: Section<'_>) -> MailConfig {
    let transport = s.get("transport", MailTransport::File, mail_transport);
    let dir = s.get("dir", PathBuf::from("data/outbox"), path);
    let smtp_url = s.get("smtp_url", String::new(), text);
    let from = s.get(
        "from",
        "Meiro <no-reply@localhost>".to_owned(),
        non_empty_text,
    );
    let templates_dir = s.opt("templates_dir", path);
    let smtp_timeout = s.get("smtp_timeout", secs(10), duration);
    let retry_initial = s.get("retry_initial", secs(1), duration);
    let retry_max = s.get("retry_max", secs(300), duration);
    let give_up_after = s.get("give_up_after", secs(86_400), duration);

    if transport == MailTransport::Smtp {
        match Url::parse(&smtp_url) {
            _ if smtp_url.is_empty() => s.problem("smtp_url", "required with transport = \"smtp\""),
            Ok(url) if matches!(url.scheme(), "smtp" | "smtps") && url.host_str().is_some() => {}
            // The value may hold a password: never echo it.
            _ => s.problem(
                "smtp_url",
                "must be smtp://[user:password@]host[:port] or smtps://…",
            ),
        }
    }
    s.check(
        "from",
        from.contains('@') && !from.contains(['\r', '\n']),
        "must be a mailbox such as \"Meiro <no-reply@example.com>\"",
    );
    for (key, value) in [
        ("smtp_timeout", smtp_timeout),
        ("retry_initial", retry_initial),
        ("retry_max", retry_max),
        ("give_up_after", give_up_after),
    ] {
        s.check(key, !value.is_zero(), POSITIVE);
    }
    if retry_max < retry_initial {
        s.problem("retry_max", "must be at least mail.retry_initial");
    }
    MailConfig {
        transport,
        dir,
        smtp_url: Secret::url(smtp_url),
        from,
        templates_dir,
        smtp_timeout,
        retry_initial,
        retry_max,
        give_up_after,
    }
}

/// Signature algorithms an id_token may use: asymmetric only. `none` and HS* (an HMAC keyed
/// with something public) are never on the list.
const OIDC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn read_okta(mut s: Section<'_>) -> OktaConfig {
    let enabled = s.get("enabled", false, flag);
    let issuer = s.opt("issuer", web_url_or_empty).flatten();
    let client_id = s.get("client_id", String::new(), text);
    let client_secret = s.get("client_secret", Secret::default(), secret);
    let redirect_uri = s.opt("redirect_uri", web_url_or_empty).flatten();
    let scopes = s.get(
        "scopes",
        vec!["openid".into(), "email".into(), "profile".into()],
        word_list,
    );
    let client_auth = s.get(
        "client_auth",
        OktaClientAuth::ClientSecretBasic,
        client_auth,
    );
    let auto_provision = s.get("auto_provision", false, flag);
    let default_role = s.get("default_role", crate::types::Role::User, role);
    let require_verified_email = s.get("require_verified_email", true, flag);
    let algorithms = s.get("algorithms", vec!["RS256".to_owned()], word_list);
    let http_timeout = s.get("http_timeout", secs(10), duration);
    let discovery_retry = s.get("discovery_retry", secs(30), duration);
    let jwks_min_refresh = s.get("jwks_min_refresh", secs(30), duration);

    if enabled {
        s.check(
            "issuer",
            issuer.is_some(),
            "required when okta.enabled = true",
        );
        s.check(
            "client_id",
            !client_id.is_empty(),
            "required when okta.enabled = true",
        );
        s.check(
            "client_secret",
            !client_secret.is_empty(),
            "required when okta.enabled = true",
        );
        s.check(
            "redirect_uri",
            redirect_uri.is_some(),
            "required when okta.enabled = true",
        );
        s.check(
            "scopes",
            scopes.iter().any(|scope| scope == "openid"),
            "must include \"openid\"",
        );
    }
    if algorithms.is_empty() {
        s.problem("algorithms", "must name at least one algorithm");
    }
    for alg in &algorithms {
        if !OIDC_ALGORITHMS.contains(&alg.as_str()) {
            s.problem(
                "algorithms",
                format!(
                    "{alg:?} is not accepted; use one of {}",
                    OIDC_ALGORITHMS.join(", ")
                ),
            );
        }
    }
    for (key, value) in [
        ("http_timeout", http_timeout),
        ("discovery_retry", discovery_retry),
        ("jwks_min_refresh", jwks_min_refresh),
    ] {
        s.check(key, !value.is_zero(), POSITIVE);
    }
    OktaConfig {
        enabled,
        issuer,
        client_id,
        client_secret,
        redirect_uri,
        scopes,
        client_auth,
        auto_provision,
        default_role,
        require_verified_email,
        algorithms,
        http_timeout,
        discovery_retry,
        jwks_min_refresh,
    }
}

/// An http(s) URL, or `""` for "not set" (operations.md writes empty strings for unset keys).
fn web_url_or_empty(value: &Value) -> Result<Option<Url>, String> {
    match value {
        Value::String(_, s) if s.trim().is_empty() => Ok(None),
        other => web_url(other).map(Some),
    }
}

/// A list of words: a TOML array of strings, or one space-separated string.
fn word_list(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(_, items) => items.iter().map(non_empty_text).collect(),
        other => Ok(text(other)?.split_whitespace().map(str::to_owned).collect()),
    }
}

fn client_auth(value: &Value) -> Result<OktaClientAuth, String> {
    match text(value)?.as_str() {
        "client_secret_basic" => Ok(OktaClientAuth::ClientSecretBasic),
        "client_secret_post" => Ok(OktaClientAuth::ClientSecretPost),
        other => Err(format!(
            "unknown client authentication {other:?}; expected \"client_secret_basic\" or \"client_secret_post\""
        )),
    }
}

fn role(value: &Value) -> Result<crate::types::Role, String> {
    let text = text(value)?;
    crate::types::Role::parse(&text)
        .ok_or_else(|| format!("unknown role {text:?}; expected \"admin\" or \"user\""))
}

fn mail_transport(value: &Value) -> Result<MailTransport, String> {
    match text(value)?.as_str() {
        "file" => Ok(MailTransport::File),
        "smtp" => Ok(MailTransport::Smtp),
        other => Err(format!(
            "unknown transport {other:?}; expected \"file\" or \"smtp\""
        )),
    }
}

fn read_auth_upstream(mut s: Section<'_>) -> AuthUpstreamConfig {
    let upstream = s.required("upstream", non_empty_text).unwrap_or_default();
    let introspect_path = s
        .required("introspect_path", route_prefix)
        .unwrap_or_default();
    let introspect_method = s.get("introspect_method", "GET".to_owned(), text);
    let positive_ttl = s.get("positive_ttl", secs(60), duration);
    let negative_ttl = s.get("negative_ttl", secs(5), duration);
    s.check(
        "introspect_method",
        http::Method::from_bytes(introspect_method.as_bytes()).is_ok(),
        "must be an HTTP method such as GET",
    );
    s.check("positive_ttl", !positive_ttl.is_zero(), POSITIVE);
    s.check("negative_ttl", !negative_ttl.is_zero(), POSITIVE);
    AuthUpstreamConfig {
        upstream,
        introspect_path,
        introspect_method: introspect_method.to_ascii_uppercase(),
        positive_ttl,
        negative_ttl,
    }
}

fn read_auth(mut s: Section<'_>) -> AuthConfig {
    let mode = s.get("mode", AuthMode::Local, auth_mode);
    let upstream = s
        .has("upstream")
        .then(|| read_auth_upstream(s.section("upstream")));
    if mode == AuthMode::Upstream && upstream.is_none() {
        s.problem(
            "upstream",
            "required with auth.mode = \"upstream\" (at least introspect_path)",
        );
    }
    let access_token_ttl = s.get("access_token_ttl", secs(8 * 3600), duration);
    let refresh_window = s.get("refresh_window", secs(4 * 3600), duration);
    let session_max_age = s.get("session_max_age", secs(30 * 86_400), duration);
    let cookie_name = s.get("cookie_name", "meiro_access_token".to_owned(), text);
    let cookie_secure = s.get("cookie_secure", true, flag);
    let keys_dir = s.get("keys_dir", PathBuf::from("data/keys"), path);
    let signing_algorithm = s.get(
        "signing_algorithm",
        SigningAlgorithm::default(),
        signing_algorithm,
    );
    let keys_rescan_interval = s.get("keys_rescan_interval", secs(60), duration);
    let key_activation_delay = s.get("key_activation_delay", secs(120), duration);
    s.check(
        "keys_rescan_interval",
        !keys_rescan_interval.is_zero(),
        POSITIVE,
    );
    let password_hash_concurrency = s.get(
        "password_hash_concurrency",
        default_hash_concurrency(),
        whole::<usize>,
    );
    let login_throttle = read_throttle(s.section("login_throttle"));
    let reset_throttle = read_throttle(s.section("reset_throttle"));
    let invitation_ttl = s.get("invitation_ttl", secs(5 * 86_400), duration);
    let reset_ttl = s.get("reset_ttl", secs(3600), duration);
    let password_min_length = s.get("password_min_length", 12, whole::<usize>);
    let recheck_interval = s.get("recheck_interval", secs(30), duration);
    s.check(
        "recheck_interval",
        recheck_interval.as_secs() >= 1,
        "must be at least 1s",
    );
    s.check("invitation_ttl", !invitation_ttl.is_zero(), POSITIVE);
    s.check("reset_ttl", !reset_ttl.is_zero(), POSITIVE);
    s.check(
        "password_min_length",
        password_min_length >= 8,
        "must be at least 8 (NIST SP 800-63B)",
    );

    s.check("access_token_ttl", !access_token_ttl.is_zero(), POSITIVE);
    s.check("refresh_window", !refresh_window.is_zero(), POSITIVE);
    s.check("session_max_age", !session_max_age.is_zero(), POSITIVE);
    if !session_max_age.is_zero() && session_max_age < access_token_ttl {
        let ttl = duration_serde::format(access_token_ttl);
        s.problem(
            "session_max_age",
            format!("must be at least auth.access_token_ttl ({ttl})"),
        );
    }
    if cookie_name.is_empty() {
        s.problem("cookie_name", "must not be empty");
    } else {
        s.check(
            "cookie_name",
            cookie_name.bytes().all(is_token_byte),
            "may contain only letters, digits and !#$%&'*+-.^_`|~ (an RFC 6265 token)",
        );
    }
    s.check(
        "password_hash_concurrency",
        password_hash_concurrency >= 1,
        "must be at least 1",
    );
    AuthConfig {
        mode,
        upstream,
        access_token_ttl,
        refresh_window,
        session_max_age,
        cookie_name,
        cookie_secure,
        keys_dir,
        signing_algorithm,
        keys_rescan_interval,
        key_activation_delay,
        password_hash_concurrency,
        login_throttle,
        reset_throttle,
        invitation_ttl,
        reset_ttl,
        password_min_length,
        recheck_interval,
    }
}

/// Half the cores: hashing must not starve the proxy of CPU.
fn default_hash_concurrency() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores / 2).max(1)
}

/// RFC 6265 cookie-name = RFC 2616 token: visible ASCII except separators.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}

fn read_throttle(mut s: Section<'_>) -> ThrottleConfig {
    let per_account = s.get("per_account", 5, whole::<u32>);
    let per_ip = s.get("per_ip", 20, whole::<u32>);
    let window = s.get("window", secs(15 * 60), duration);
    s.check("per_account", per_account > 0, POSITIVE);
    s.check("per_ip", per_ip > 0, POSITIVE);
    s.check("window", !window.is_zero(), POSITIVE);
    ThrottleConfig {
        per_account,
        per_ip,
        window,
    }
}

fn read_bootstrap(mut s: Section<'_>) -> BootstrapConfig {
    let admin_email = s.get("admin_email", String::new(), text);
    let admin_password = s.get("admin_password", Secret::default(), secret);
    if !admin_email.is_empty() {
        // The rule every address meets (`crate::email`): the admin gets reset mail too.
        if let Err(rule) = crate::email::parse(&crate::email::normalize(&admin_email)) {
            s.problem(
                "admin_email",
                format!("must be an e-mail address such as admin@example.com: {rule}"),
            );
        }
        if admin_password.is_empty() {
            s.problem(
                "admin_password",
                "required when bootstrap.admin_email is set",
            );
        } else {
            s.check(
                "admin_password",
                admin_password.expose().chars().count() >= 12,
                "must be at least 12 characters long",
            );
        }
    }
    BootstrapConfig {
        admin_email,
        admin_password,
    }
}

fn read_limits(mut s: Section<'_>) -> LimitsConfig {
    let max_connections = s.get("max_connections", 10_000, whole::<usize>);
    let header_read_timeout = s.get("header_read_timeout", secs(10), duration);
    let max_header_bytes = s.get("max_header_bytes", 16_384, whole::<usize>);
    let api_max_body = s.get("api_max_body", ByteSize::new(64 * 1024), byte_size);
    let idle_timeout = s.get("idle_timeout", secs(60), duration);
    let body_read_timeout = s.get("body_read_timeout", secs(60), duration);
    let http2_keepalive_interval = s.get("http2_keepalive_interval", secs(30), duration);
    let http2_keepalive_timeout = s.get("http2_keepalive_timeout", secs(20), duration);
    s.check("max_connections", max_connections > 0, POSITIVE);
    s.check("idle_timeout", !idle_timeout.is_zero(), POSITIVE);
    s.check("body_read_timeout", !body_read_timeout.is_zero(), POSITIVE);
    s.check(
        "http2_keepalive_timeout",
        !http2_keepalive_timeout.is_zero(),
        POSITIVE,
    );
    s.check(
        "header_read_timeout",
        !header_read_timeout.is_zero(),
        POSITIVE,
    );
    s.check(
        "max_header_bytes",
        max_header_bytes >= 1024,
        "must be at least 1024",
    );
    s.check("api_max_body", api_max_body.as_u64() > 0, POSITIVE);
    LimitsConfig {
        max_connections,
        header_read_timeout,
        max_header_bytes,
        api_max_body,
        idle_timeout,
        body_read_timeout,
        http2_keepalive_interval,
        http2_keepalive_timeout,
    }
}

fn read_log(mut s: Section<'_>) -> LogConfig {
    let filter = s.get("filter", "info".to_owned(), text);
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&filter) {
        s.problem("filter", format!("not a valid log filter: {e}"));
    }
    LogConfig { filter }
}

fn read_upstream(mut s: Section<'_>) -> UpstreamConfig {
    let name = s.required("name", non_empty_text).unwrap_or_default();
    let instances = s.required_list("instances", upstream_url);
    let balance = s.get("balance", Balance::RoundRobin, balance);
    let connect_timeout = s.get("connect_timeout", secs(2), duration);
    let response_timeout = s.get("response_timeout", secs(30), duration);
    let idle_timeout = s.get("idle_timeout", secs(90), duration);
    let retries = s.get("retries", 2, whole::<u32>);
    let retry_budget = s.get("retry_budget", 0.2, fraction);
    let protocol = s.get("protocol", UpstreamProtocol::Http1, upstream_protocol);
    let ca_file = s.opt("ca_file", path);
    let eject_base = s.get("eject_base", secs(5), duration);
    let eject_max = s.get("eject_max", secs(60), duration);
    let health = s.has("health").then(|| read_health(s.section("health")));
    for (key, value) in [
        ("connect_timeout", connect_timeout),
        ("response_timeout", response_timeout),
        ("idle_timeout", idle_timeout),
        ("eject_base", eject_base),
    ] {
        s.check(key, !value.is_zero(), POSITIVE);
    }
    if eject_max < eject_base {
        s.problem("eject_max", "must be at least eject_base");
    }
    s.check("retries", retries <= 10, "at most 10");
    if ca_file.is_some() && !instances.iter().any(|u| u.scheme() == "https") {
        s.problem("ca_file", "only used with https:// instances");
    }
    UpstreamConfig {
        name,
        instances,
        balance,
        connect_timeout,
        response_timeout,
        idle_timeout,
        retries,
        retry_budget,
        protocol,
        ca_file,
        eject_base,
        eject_max,
        health,
    }
}

fn read_health(mut s: Section<'_>) -> HealthCheckConfig {
    let path = s.get("path", "/healthz".to_owned(), route_prefix);
    let interval = s.get("interval", secs(5), duration);
    let timeout = s.get("timeout", secs(1), duration);
    let healthy_threshold = s.get("healthy_threshold", 2, whole::<u32>);
    let unhealthy_threshold = s.get("unhealthy_threshold", 3, whole::<u32>);
    s.check("interval", !interval.is_zero(), POSITIVE);
    s.check("timeout", !timeout.is_zero(), POSITIVE);
    s.check("healthy_threshold", healthy_threshold > 0, POSITIVE);
    s.check("unhealthy_threshold", unhealthy_threshold > 0, POSITIVE);
    HealthCheckConfig {
        path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    }
}

fn fraction(value: &Value) -> Result<f64, String> {
    let n = match value {
        Value::Num(_, n) => n.to_f64(),
        Value::String(_, s) => s.trim().parse::<f64>().ok(),
        other => return Err(format!("expected a number, found {}", kind(other))),
    };
    n.filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| "expected a number from 0 to 1".to_owned())
}

fn upstream_protocol(value: &Value) -> Result<UpstreamProtocol, String> {
    match text(value)?.as_str() {
        "http1" => Ok(UpstreamProtocol::Http1),
        "http2" => Ok(UpstreamProtocol::Http2),
        other => Err(format!(
            "unknown protocol {other:?}; expected \"http1\" or \"http2\""
        )),
    }
}

fn read_cors(mut s: Section<'_>) -> CorsConfig {
    let allowed_origins = s.required_list("allowed_origins", non_empty_text);
    let allowed_methods = s.get(
        "allowed_methods",
        ["GET", "POST", "PUT", "PATCH", "DELETE"]
            .map(String::from)
            .to_vec(),
        word_list,
    );
    let allowed_headers = s.get(
        "allowed_headers",
        ["X-Access-Token", "Authorization", "Content-Type"]
            .map(String::from)
            .to_vec(),
        word_list,
    );
    let expose_headers = s.get("expose_headers", Vec::new(), word_list);
    let allow_credentials = s.get("allow_credentials", true, flag);
    let max_age = s.get("max_age", secs(600), duration);
    for origin in &allowed_origins {
        if origin == "*" {
            if allow_credentials {
                s.problem(
                    "allowed_origins",
                    "\"*\" cannot be combined with allow_credentials = true (browsers refuse it)",
                );
            }
        } else if Url::parse(origin)
            .ok()
            .filter(|u| u.origin().ascii_serialization() == *origin)
            .is_none()
        {
            s.problem(
                "allowed_origins",
                format!("{origin:?} is not an origin like \"https://app.example.com\" (scheme, host, optional port; no path)"),
            );
        }
    }
    for method in &allowed_methods {
        s.check(
            "allowed_methods",
            http::Method::from_bytes(method.as_bytes()).is_ok(),
            "must be HTTP method names",
        );
    }
    for header in allowed_headers.iter().chain(&expose_headers) {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            s.problem(
                "allowed_headers",
                format!("{header:?} is not a header name"),
            );
        }
    }
    CorsConfig {
        allowed_origins,
        allowed_methods,
        allowed_headers,
        expose_headers,
        allow_credentials,
        max_age,
    }
}

fn read_route(mut s: Section<'_>) -> RouteConfig {
    let name = s.opt("name", non_empty_text);
    if let Some(name) = &name {
        s.check(
            "name",
            name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')),
            "must be up to 64 letters, digits, \"_\", \"-\" or \".\"",
        );
    }
    let prefix = s.required("prefix", route_prefix).unwrap_or_default();
    let upstream = s.required("upstream", text).unwrap_or_default();
    let public = s.get("public", false, flag);
    let host = s
        .opt("host", non_empty_text)
        .map(|h| h.trim().to_ascii_lowercase());
    let strip_prefix = s.get("strip_prefix", false, flag);
    let max_body = s.opt("max_body", byte_size);
    let timeout = s.opt("timeout", duration);
    if let Some(h) = &host {
        s.check(
            "host",
            http::uri::Authority::try_from(h.as_str()).is_ok() && !h.contains('/'),
            "must be a host name such as api.example.com",
        );
    }
    if timeout.is_some_and(|t| t.is_zero()) {
        s.problem("timeout", POSITIVE);
    }
    let upgrades: Vec<String> = s
        .get("upgrades", vec!["websocket".to_owned()], word_list)
        .into_iter()
        .map(|p| p.to_ascii_lowercase())
        .collect();
    for protocol in &upgrades {
        if protocol == "h2c" || protocol.starts_with("h2c/") {
            s.problem(
                "upgrades",
                "h2c cannot be tunnelled: past the switch the client speaks HTTP/2 to the \
                 upstream and no request is checked (serve HTTP/2 clients with prior knowledge \
                 or TLS instead)",
            );
        } else if !protocol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b))
        {
            s.problem("upgrades", format!("{protocol:?} is not a protocol token"));
        }
    }
    RouteConfig {
        name,
        prefix,
        upstream,
        public,
        host,
        strip_prefix,
        max_body,
        timeout,
        upgrades,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        load_from_figment(&Figment::from(Toml::string(toml)))
    }

    fn ok(toml: &str) -> Config {
        match from_toml(toml) {
            Ok(config) => config,
            Err(e) => panic!("expected no problems, got:\n{e}"),
        }
    }

    fn problems(toml: &str) -> Vec<Problem> {
        match from_toml(toml) {
            Ok(_) => panic!("expected problems in:\n{toml}"),
            Err(e) => e.problems,
        }
    }

    /// Asserts that exactly one problem names `key`, and that its message contains `needle`.
    #[track_caller]
    fn assert_problem(toml: &str, key: &str, needle: &str) {
        let found = problems(toml);
        let on_key: Vec<_> = found.iter().filter(|p| p.key == key).collect();
        assert!(
            on_key.len() == 1 && on_key[0].message.contains(needle),
            "expected one problem on {key} containing {needle:?}, got {found:#?}"
        );
    }

    fn env(vars: &[(&str, &str)]) -> EnvLayer {
        EnvLayer(
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
        )
    }

    const UPSTREAM: &str =
        "[[upstreams]]\nname = \"meiro\"\ninstances = [\"http://127.0.0.1:9000\"]\n";

    #[test]
    fn data_plane_keys_and_defaults() {
        let c = ok(&format!(
            r#"
            [server]
            access_log = false
            tls = {{ cert = "c.pem", key = "k.pem" }}
            [cors]
            allowed_origins = ["https://app.example.com", "http://localhost:3000"]
            {UPSTREAM}
            balance = "least_request"
            protocol = "http2"
            health = {{ path = "/health" }}
            [[routes]]
            prefix = "/api"
            upstream = "meiro"
            host = "API.Example.com"
            strip_prefix = true
            max_body = "1MiB"
            timeout = "5s"
            "#
        ));
        assert!(!c.server.access_log);
        assert_eq!(c.server.tls.as_ref().unwrap().cert, PathBuf::from("c.pem"));
        let cors = c.cors.unwrap();
        assert_eq!(cors.allowed_origins.len(), 2);
        assert!(cors.allow_credentials);
        assert_eq!(cors.max_age, secs(600));
        assert!(cors.allowed_headers.iter().any(|h| h == "X-Access-Token"));
        let u = &c.upstreams[0];
        assert_eq!(u.balance, Balance::LeastRequest);
        assert_eq!(u.protocol, UpstreamProtocol::Http2);
        assert_eq!(u.retries, 2);
        assert_eq!(u.retry_budget, 0.2);
        assert_eq!(u.idle_timeout, secs(90));
        assert_eq!((u.eject_base, u.eject_max), (secs(5), secs(60)));
        let h = u.health.as_ref().unwrap();
        assert_eq!(h.path, "/health");
        assert_eq!((h.interval, h.timeout), (secs(5), secs(1)));
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));
        let r = &c.routes[0];
        assert_eq!(r.host.as_deref(), Some("api.example.com"));
        assert!(r.strip_prefix);
        assert_eq!(r.max_body, Some(ByteSize::new(1 << 20)));
        assert_eq!(r.timeout, Some(secs(5)));
        let plain = ok("");
        assert!(plain.server.access_log && plain.server.tls.is_none() && plain.cors.is_none());
    }

    #[test]
    fn a_prefix_may_repeat_for_different_hosts() {
        let routes = |hosts: [&str; 2]| {
            let mut t = UPSTREAM.to_owned();
            for host in hosts {
                t.push_str("[[routes]]\nprefix = \"/api\"\nupstream = \"meiro\"\n");
                if !host.is_empty() {
                    t.push_str(&format!("host = \"{host}\"\n"));
                }
            }
            t
        };
        assert_eq!(ok(&routes(["a.example.com", ""])).routes.len(), 2);
        assert_eq!(
            ok(&routes(["a.example.com", "b.example.com"])).routes.len(),
            2
        );
        assert_problem(
            &routes(["a.example.com", "A.example.com"]),
            "routes[1].prefix",
            "duplicate",
        );
        assert_problem(&routes(["", ""]), "routes[1].prefix", "duplicate");
    }

    #[test]
    fn tls_cors_and_route_rules() {
        assert_problem(
            "[server]\ntls = { cert = \"c.pem\" }\n",
            "server.tls.key",
            "missing",
        );
        assert_problem("[cors]\n", "cors.allowed_origins", "missing");
        assert_problem(
            "[cors]\nallowed_origins = [\"*\"]\n",
            "cors.allowed_origins",
            "allow_credentials",
        );
        assert!(
            ok("[cors]\nallowed_origins = [\"*\"]\nallow_credentials = false\n")
                .cors
                .is_some()
        );
        assert_problem(
            "[cors]\nallowed_origins = [\"https://app.example.com/path\"]\n",
            "cors.allowed_origins",
            "not an origin",
        );
        let route = |extra: &str| {
            format!("{UPSTREAM}[[routes]]\nprefix = \"/\"\nupstream = \"meiro\"\n{extra}\n")
        };
        assert_problem(&route("timeout = \"0s\""), "routes[0].timeout", POSITIVE);
        assert_problem(&route("host = \"a/b\""), "routes[0].host", "host name");
        assert_problem(&route("max_body = \"lots\""), "routes[0].max_body", "");
        assert_problem(
            &route("name = \"a b\""),
            "routes[0].name",
            "letters, digits",
        );
        assert_problem(&route("name = \"\""), "routes[0].name", "empty");
        assert_eq!(
            ok(&route("name = \"api-v1.2_x\"")).routes[0]
                .name
                .as_deref(),
            Some("api-v1.2_x")
        );
    }

    #[test]
    fn upstream_mode_needs_introspection_and_a_known_cluster() {
        let c = ok(&format!(
            "{UPSTREAM}[auth]\nmode = \"upstream\"\n[auth.upstream]\nupstream = \"meiro\"\nintrospect_path = \"/users/me\"\n"
        ));
        assert_eq!(c.auth.mode, AuthMode::Upstream);
        let up = c.auth.upstream.unwrap();
        assert_eq!(up.introspect_method, "GET");
        assert_eq!((up.positive_ttl, up.negative_ttl), (secs(60), secs(5)));
        assert_problem(
            &format!(
                "{UPSTREAM}[auth]\nmode = \"upstream\"\n[auth.upstream]\nupstream = \"meiro\"\n"
            ),
            "auth.upstream.introspect_path",
            "missing",
        );
        assert_problem(
            &format!(
                "{UPSTREAM}[auth]\nmode = \"upstream\"\n[auth.upstream]\nupstream = \"nope\"\nintrospect_path = \"/me\"\n"
            ),
            "auth.upstream.upstream",
            "unknown upstream",
        );
        assert_problem(
            &format!(
                "{UPSTREAM}[auth.upstream]\nupstream = \"meiro\"\nintrospect_path = \"/me\"\nnegative_ttl = \"0s\"\n"
            ),
            "auth.upstream.negative_ttl",
            POSITIVE,
        );
    }

    #[test]
    fn mail_and_one_time_link_defaults() {
        let c = ok("");
        assert_eq!(c.mail.transport, MailTransport::File);
        assert_eq!(c.mail.dir, PathBuf::from("data/outbox"));
        assert_eq!(c.mail.from, "Meiro <no-reply@localhost>");
        assert_eq!(c.mail.templates_dir, None);
        assert_eq!(c.mail.retry_initial, secs(1));
        assert_eq!(c.mail.retry_max, secs(300));
        assert_eq!(c.mail.give_up_after, secs(86_400));
        assert_eq!(c.auth.invitation_ttl, secs(5 * 86_400));
        assert_eq!(c.auth.reset_ttl, secs(3600));
        assert_eq!(c.auth.password_min_length, 12);
        assert_eq!(c.auth.reset_throttle.per_account, 5);
        assert_eq!(c.auth.reset_throttle.per_ip, 20);
    }

    #[test]
    fn smtp_transport_needs_a_valid_smtp_url_and_never_echoes_it() {
        assert_problem(
            "[mail]\ntransport = \"smtp\"\n",
            "mail.smtp_url",
            "required",
        );
        let found =
            problems("[mail]\ntransport = \"smtp\"\nsmtp_url = \"http://u:hunter2-secret@x\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "mail.smtp_url");
        assert!(!found[0].message.contains("hunter2"), "{found:?}");
        let c =
            ok("[mail]\ntransport = \"smtp\"\nsmtp_url = \"smtps://u:p@mail.example.com:465\"\n");
        assert_eq!(c.mail.transport, MailTransport::Smtp);
        let printed = toml::to_string(&c).unwrap();
        assert!(!printed.contains("u:p@"), "{printed}");
        assert_problem(
            "[mail]\ntransport = \"carrier-pigeon\"\n",
            "mail.transport",
            "unknown transport",
        );
    }

    #[test]
    fn mail_sender_retry_and_policy_rules() {
        assert_problem("[mail]\nfrom = \"nobody\"\n", "mail.from", "mailbox");
        assert_problem(
            "[mail]\nretry_initial = \"10m\"\nretry_max = \"1m\"\n",
            "mail.retry_max",
            "at least",
        );
        assert_problem(
            "[mail]\ngive_up_after = \"0s\"\n",
            "mail.give_up_after",
            "greater than zero",
        );
        assert_problem(
            "[auth]\npassword_min_length = 6\n",
            "auth.password_min_length",
            "at least 8",
        );
        assert_problem(
            "[auth]\nreset_ttl = \"0s\"\n",
            "auth.reset_ttl",
            "greater than zero",
        );
        assert_problem(
            "[auth.reset_throttle]\nper_ip = 0\n",
            "auth.reset_throttle.per_ip",
            "greater than zero",
        );
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = ok("");
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.public_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(c.server.frontend_url, c.server.public_url);
        assert_eq!(c.server.drain_timeout, secs(30));
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.store.url.expose(), "sqlite://data/meiro-gate.db");
        assert_eq!(c.auth.mode, AuthMode::Local);
        assert_eq!(c.auth.access_token_ttl, secs(8 * 3600));
        assert_eq!(c.auth.refresh_window, secs(4 * 3600));
        assert_eq!(c.auth.session_max_age, secs(30 * 86_400));
        assert_eq!(c.auth.cookie_name, "meiro_access_token");
        assert!(c.auth.cookie_secure);
        assert_eq!(c.auth.keys_dir, PathBuf::from("data/keys"));
        assert!(c.auth.password_hash_concurrency >= 1);
        assert_eq!(c.auth.password_hash_concurrency, default_hash_concurrency());
        assert_eq!(c.auth.login_throttle.per_account, 5);
        assert_eq!(c.auth.login_throttle.per_ip, 20);
        assert_eq!(c.auth.login_throttle.window, secs(15 * 60));
        assert_eq!(c.bootstrap.admin_email, "");
        assert!(c.bootstrap.admin_password.is_empty());
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.header_read_timeout, secs(10));
        assert_eq!(c.limits.max_header_bytes, 16_384);
        assert_eq!(c.limits.api_max_body, ByteSize::new(64 * 1024));
        assert!(c.upstreams.is_empty());
        assert!(c.routes.is_empty());
    }

    #[test]
    fn embedded_default_file_loads_cleanly() {
        let c = ok(include_str!("../../config/meiro-gate.toml"));
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.public_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(c.server.frontend_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.store.url.expose(), "sqlite://data/meiro-gate.db");
        assert_eq!(c.auth.access_token_ttl, secs(8 * 3600));
        assert_eq!(c.auth.session_max_age, secs(30 * 86_400));
        assert!(c.auth.cookie_secure);
        assert_eq!(c.auth.keys_dir, PathBuf::from("data/keys"));
        assert_eq!(c.auth.login_throttle.window, secs(15 * 60));
        assert_eq!(c.bootstrap.admin_email, "");
        assert_eq!(c.limits.api_max_body.to_string(), "64KiB");
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].name, "meiro");
        assert_eq!(
            c.upstreams[0].instances[0].as_str(),
            "http://127.0.0.1:9000/"
        );
        assert_eq!(c.upstreams[0].balance, Balance::RoundRobin);
        assert_eq!(c.upstreams[0].connect_timeout, secs(2));
        assert_eq!(c.upstreams[0].response_timeout, secs(30));
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].prefix, "/");
        assert_eq!(c.routes[0].upstream, "meiro");
        assert!(!c.routes[0].public);
    }

    #[test]
    fn audit_retention_defaults_to_90_days_and_must_be_positive() {
        assert_eq!(ok("").audit.retention, secs(90 * 86_400));
        let c = ok("[audit]\nretention = \"30d\"");
        assert_eq!(c.audit.retention, secs(30 * 86_400));
        for bad in ["\"0s\"", "30", "\"soon\""] {
            let found = problems(&format!("[audit]\nretention = {bad}"));
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].key, "audit.retention");
        }
    }

    /// `check-config` prints the effective config as TOML; saved as a file, it must load back.
    #[test]
    fn printed_config_loads_back_unchanged() {
        for source in ["", include_str!("../../config/meiro-gate.toml")] {
            let printed = toml::to_string_pretty(&ok(source)).unwrap();
            let again = toml::to_string_pretty(&ok(&printed)).unwrap();
            assert_eq!(again, printed);
        }
    }

    /// Found by fuzzing (fuzz/regressions/config_toml): an unknown key `""` was reported
    /// under an empty key.
    #[test]
    fn unknown_keys_that_are_not_bare_are_reported_quoted() {
        for (toml, key) in [
            ("[\"\"]\nx = 1\n", r#""""#),
            ("\"\" = 1\n", r#""""#),
            ("[server]\n\"a.b\" = 1\n", r#"server."a.b""#),
            ("[server]\n\"a b\" = 1\n", r#"server."a b""#),
            ("[server]\nsome-key_2 = 1\n", "server.some-key_2"),
        ] {
            let found = problems(toml);
            assert_eq!(found.len(), 1, "{found:?}");
            let found = (found[0].key.as_str(), found[0].message.as_str());
            assert_eq!(found, (key, "unknown key"));
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let err = from_toml(
            r#"
            [server]
            listen = "localhost"
            [auth]
            access_token_ttl = "forever"
            cookie_name = "bad name"
            [limits]
            max_connections = 0
            [[upstreams]]
            name = "meiro"
            instances = ["http://127.0.0.1:9000", "ftp://x"]
            [[routes]]
            prefix = "/"
            upstream = "nope"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "server.listen",
            "auth.access_token_ttl",
            "auth.cookie_name",
            "limits.max_connections",
            "upstreams[0].instances[1]",
            "routes[0].upstream",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(err.problems.len(), 6, "{err}");
        // Display: one `<key>: <message>` per line.
        let text = err.to_string();
        assert_eq!(text.lines().count(), 6);
        assert!(
            text.lines()
                .any(|l| l == "routes[0].upstream: unknown upstream \"nope\"")
        );
    }

    #[test]
    fn env_overrides_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gate.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"0.0.0.0:8000\"\n[auth]\ncookie_name = \"from_file\"\nrefresh_window = \"1h\"\n",
        )
        .unwrap();
        let figment = layers(
            Some(&file),
            env(&[
                ("MEIRO_GATE_AUTH__COOKIE_NAME", "from_env"),
                ("MEIRO_GATE_AUTH__COOKIE_SECURE", "false"),
                ("MEIRO_GATE_AUTH__LOGIN_THROTTLE__PER_IP", "7"),
                ("MEIRO_GATE_LIMITS__API_MAX_BODY", "1MiB"),
                ("OTHER_AUTH__COOKIE_NAME", "ignored"),
            ]),
        );
        let c = load_from_figment(&figment).unwrap();
        assert_eq!(c.auth.cookie_name, "from_env"); // env over file
        assert_eq!(c.auth.refresh_window, secs(3600)); // file over default
        assert_eq!(c.server.listen, "0.0.0.0:8000".parse().unwrap()); // file over default
        assert_eq!(c.auth.access_token_ttl, secs(8 * 3600)); // default
        assert!(!c.auth.cookie_secure);
        assert_eq!(c.auth.login_throttle.per_ip, 7);
        assert_eq!(c.limits.api_max_body, ByteSize::new(1 << 20));
        // A wildcard listen address defaults the public URL to loopback.
        assert_eq!(c.server.public_url.as_str(), "http://127.0.0.1:8000/");
    }

    #[test]
    fn env_values_are_kept_verbatim() {
        let figment = layers(
            None,
            env(&[
                ("MEIRO_GATE_AUTH__COOKIE_NAME", "007"),
                ("MEIRO_GATE_BOOTSTRAP__ADMIN_EMAIL", "admin@example.com"),
                (
                    "MEIRO_GATE_BOOTSTRAP__ADMIN_PASSWORD",
                    " \"0123456789012\" ",
                ),
                ("meiro_gate_server__listen", "[::]:8080"),
            ]),
        );
        let c = load_from_figment(&figment).unwrap();
        assert_eq!(c.auth.cookie_name, "007");
        assert_eq!(c.bootstrap.admin_password.expose(), " \"0123456789012\" ");
        assert_eq!(c.server.listen, "[::]:8080".parse().unwrap());
        assert_eq!(c.server.public_url.as_str(), "http://[::1]:8080/");
    }

    #[test]
    fn env_config_and_test_variables_are_not_settings() {
        let figment = layers(
            None,
            env(&[
                ("MEIRO_GATE_CONFIG", "/etc/meiro-gate.toml"),
                ("MEIRO_GATE_TEST_POSTGRES_URL", "postgres://u:p@localhost/t"),
            ]),
        );
        assert!(load_from_figment(&figment).is_ok());
    }

    #[test]
    fn kubernetes_service_links_are_not_settings() {
        let figment = layers(
            None,
            env(&[
                ("MEIRO_GATE_SERVICE_HOST", "10.0.0.7"),
                ("MEIRO_GATE_SERVICE_PORT", "80"),
                ("MEIRO_GATE_SERVICE_PORT_HTTP", "80"),
                ("MEIRO_GATE_PORT", "tcp://10.0.0.7:80"),
                ("MEIRO_GATE_PORT_80_TCP", "tcp://10.0.0.7:80"),
                ("MEIRO_GATE_PORT_80_TCP_PROTO", "tcp"),
                ("MEIRO_GATE_PORT_80_TCP_PORT", "80"),
                ("MEIRO_GATE_PORT_80_TCP_ADDR", "10.0.0.7"),
            ]),
        );
        assert!(load_from_figment(&figment).is_ok());
        // A near miss of a real key is still an error.
        let figment = layers(None, env(&[("MEIRO_GATE_SERVICE__LISTEN", "0.0.0.0:1")]));
        assert!(load_from_figment(&figment).is_err());
    }

    #[test]
    fn env_problems_name_the_variable() {
        let figment = layers(
            None,
            env(&[
                ("MEIRO_GATE_AUTH__COOKIE_NAM", "x"),
                ("MEIRO_GATE_AUTH__ACCESS_TOKEN_TTL", "30"),
                ("MEIRO_GATE_SERVER_LISTEN", "0.0.0.0:1"),
            ]),
        );
        let err = load_from_figment(&figment).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("auth.cookie_nam: unknown key (from MEIRO_GATE_AUTH__COOKIE_NAM)"),
            "{text}"
        );
        assert!(
            text.contains("write a unit, e.g. \"30s\" (from MEIRO_GATE_AUTH__ACCESS_TOKEN_TTL)"),
            "{text}"
        );
        assert!(text.contains("server_listen: unknown key"), "{text}");
    }

    #[test]
    fn env_variable_clash_is_reported() {
        let figment = layers(
            None,
            env(&[("MEIRO_GATE_AUTH", "x"), ("MEIRO_GATE_AUTH__MODE", "local")]),
        );
        let err = load_from_figment(&figment).unwrap_err();
        assert_eq!(err.problems[0].key, "config");
        assert!(
            err.problems[0].message.contains("MEIRO_GATE_AUTH__MODE"),
            "{err}"
        );
    }

    #[test]
    fn config_file_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present.toml");
        std::fs::write(&present, "").unwrap();
        let missing = dir.path().join("missing.toml");

        // Explicit path wins and must exist.
        let chosen = config_file(Some(&present), Some(missing.clone().into()), &missing);
        assert_eq!(chosen, Ok(Some(present.clone())));
        let err = config_file(Some(&missing), None, &present).unwrap_err();
        assert_eq!(err.key, "config");
        assert!(err.message.contains("file not found"), "{err}");

        // Then $MEIRO_GATE_CONFIG, which must exist too.
        assert_eq!(
            config_file(None, Some(present.clone().into()), &missing),
            Ok(Some(present.clone()))
        );
        let err = config_file(None, Some(missing.clone().into()), &present).unwrap_err();
        assert!(err.message.contains("MEIRO_GATE_CONFIG"), "{err}");

        // Then the conventional file, only if it exists.
        assert_eq!(config_file(None, None, &present), Ok(Some(present.clone())));
        assert_eq!(config_file(None, Some(OsString::new()), &missing), Ok(None));
    }

    #[test]
    fn load_reports_a_missing_explicit_file() {
        let err = load(Some(Path::new("/nonexistent/meiro-gate.toml"))).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].key, "config");
    }

    #[test]
    fn unreadable_toml_is_a_config_problem() {
        let err = from_toml("[server\nlisten = ").unwrap_err();
        assert_eq!(err.problems[0].key, "config");
        assert!(err.problems[0].message.contains("line 1"), "{err}");
        assert_eq!(err.to_string().lines().count(), err.problems.len(), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broken.toml");
        std::fs::write(&file, "listen = = 1").unwrap();
        let err = load_from_figment(&layers(Some(&file), env(&[]))).unwrap_err();
        assert_eq!(err.problems[0].key, "config");
        assert!(err.problems[0].message.contains("broken.toml"), "{err}");
    }

    #[test]
    fn unknown_keys_are_reported_at_every_level() {
        let found = problems(&format!(
            r#"
            typo = 1
            [okta]
            enabled = false
            colour = "red"
            [server]
            tls = {{ cert = "c.pem", key = "k.pem", chain = "x" }}
            [auth]
            cookie_nam = "x"
            [auth.login_throttle]
            per_acount = 3
            {UPSTREAM}
            retry = 2
            health = {{ path = "/h", intervall = "1s" }}
            [[routes]]
            prefix = "/"
            upstream = "meiro"
            colour = "blue"
            "#
        ));
        let expect = [
            ("typo", "unknown key"),
            ("okta.colour", "unknown key"),
            ("server.tls.chain", "unknown key"),
            ("auth.cookie_nam", "unknown key"),
            ("auth.login_throttle.per_acount", "unknown key"),
            ("upstreams[0].retry", "unknown key"),
            ("upstreams[0].health.intervall", "unknown key"),
            ("routes[0].colour", "unknown key"),
        ];
        for (key, message) in expect {
            assert!(
                found.iter().any(|p| p.key == key && p.message == message),
                "{key}: {message} missing from {found:#?}"
            );
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
    }

    /// Each case: a TOML text, the key that must have exactly one problem, a fragment of it.
    #[track_caller]
    fn assert_problems(cases: &[(&str, &str, &str)]) {
        for (toml, key, needle) in cases {
            assert_problem(toml, key, needle);
        }
    }

    #[test]
    fn wrong_types_are_reported() {
        assert_problems(&[
            ("server = 1", "server", "expected a table, found a number"),
            ("server.listen = 8080", "server.listen", "invalid address"),
            (
                r#"auth.cookie_secure = "yes""#,
                "auth.cookie_secure",
                "true or false",
            ),
            (
                "auth.cookie_name = [1]",
                "auth.cookie_name",
                "expected a string",
            ),
            (
                r#"limits.max_connections = "lots""#,
                "limits.max_connections",
                "whole number",
            ),
            (
                "limits.max_connections = -1",
                "limits.max_connections",
                "whole number",
            ),
            (
                "limits.max_header_bytes = 1.5",
                "limits.max_header_bytes",
                "whole number",
            ),
            (
                "auth.login_throttle.per_ip = 5000000000",
                "auth.login_throttle.per_ip",
                "too large",
            ),
            (
                r#"upstreams = { name = "x" }"#,
                "upstreams",
                "array of tables",
            ),
            (r#"upstreams = ["x"]"#, "upstreams[0]", "expected a table"),
            (
                r#"upstreams = [{ name = "m", instances = "http://a" }]"#,
                "upstreams[0].instances",
                "expected an array",
            ),
        ]);
    }

    #[test]
    fn lenient_scalars_are_accepted() {
        let c = ok(r#"
            [auth]
            cookie_name = 123
            cookie_secure = "false"
            password_hash_concurrency = "3"
            [limits]
            api_max_body = 2048
            "#);
        assert_eq!(c.auth.cookie_name, "123");
        assert!(!c.auth.cookie_secure);
        assert_eq!(c.auth.password_hash_concurrency, 3);
        assert_eq!(c.limits.api_max_body, ByteSize::new(2048));
    }

    #[test]
    fn durations_need_a_unit_and_must_parse() {
        let unit = r#"write a unit, e.g. "30s""#;
        assert_problems(&[
            (
                r#"server.drain_timeout = "30""#,
                "server.drain_timeout",
                unit,
            ),
            ("server.drain_timeout = 30", "server.drain_timeout", unit),
            (
                r#"server.drain_timeout = "soon""#,
                "server.drain_timeout",
                "invalid duration",
            ),
        ]);
        let c = ok(r#"server.drain_timeout = "0s"
            auth.access_token_ttl = "500ms""#);
        assert_eq!(c.server.drain_timeout, Duration::ZERO);
        assert_eq!(c.auth.access_token_ttl, Duration::from_millis(500));
    }

    #[test]
    fn server_addresses_and_urls() {
        assert_problems(&[
            (
                r#"server.listen = "localhost:8080""#,
                "server.listen",
                "host names are not resolved",
            ),
            (
                r#"admin.listen = "127.0.0.1""#,
                "admin.listen",
                "invalid address",
            ),
            (
                r#"server.public_url = "not a url""#,
                "server.public_url",
                "invalid URL",
            ),
            (
                r#"server.public_url = "ftp://x""#,
                "server.public_url",
                "http:// or https://",
            ),
            (
                r#"server.frontend_url = "https://x/?a=1""#,
                "server.frontend_url",
                "query",
            ),
        ]);

        let c = ok(r#"server.public_url = "https://gate.example.com""#);
        assert_eq!(c.server.frontend_url.as_str(), "https://gate.example.com/");
        let c = ok(
            r#"server = { public_url = "https://a.example", frontend_url = "https://app.example/ui" }"#,
        );
        assert_eq!(c.server.public_url.as_str(), "https://a.example/");
        assert_eq!(c.server.frontend_url.as_str(), "https://app.example/ui");
        let c = ok(r#"server.listen = "10.0.0.5:80""#);
        assert_eq!(c.server.public_url.as_str(), "http://10.0.0.5/");
        // URLs cannot carry an IPv6 zone id; the default drops it rather than failing.
        let c = ok(r#"server.listen = "[fe80::1%2]:8080""#);
        assert_eq!(c.server.public_url.as_str(), "http://[fe80::1]:8080/");
    }

    #[test]
    fn store_accepts_sqlite_and_postgres_and_never_echoes_the_url() {
        let c = ok(r#"store.url = "sqlite:///var/lib/gate.db""#);
        assert_eq!(c.store.url.expose(), "sqlite:///var/lib/gate.db");
        for url in [
            "postgres://gate:s3cret@db:5432/gate",
            "postgresql://gate@db/gate?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
        ] {
            let c = ok(&format!("store.url = \"{url}\""));
            assert_eq!(c.store.url.expose(), url);
        }

        for (url, needle) in [
            (
                "mysql://gate:s3cret@db/gate",
                "expected sqlite:, postgres:// or postgresql://",
            ),
            (
                "postgres://gate:s3cret@db/gate?sslmode=sometimes",
                "sometimes",
            ),
        ] {
            let found = problems(&format!("store.url = \"{url}\""));
            assert_eq!(found.len(), 1, "{url}: {found:?}");
            assert_eq!(found[0].key, "store.url");
            let message = &found[0].message;
            assert!(message.contains(needle), "{url}: {message}");
            assert!(!message.contains("s3cret"), "{url}: {message}");
        }
    }

    #[test]
    fn auth_mode_local_or_upstream() {
        assert_problems(&[
            (
                r#"auth.mode = "upstream""#,
                "auth.upstream",
                "required with auth.mode",
            ),
            (r#"auth.mode = "magic""#, "auth.mode", "unknown mode"),
        ]);
        assert_eq!(ok(r#"auth.mode = "local""#).auth.mode, AuthMode::Local);
    }

    #[test]
    fn server_worker_threads_default_to_the_runtime_and_are_positive() {
        assert_eq!(ok("").server.worker_threads, None);
        assert_eq!(
            ok("server.worker_threads = 1").server.worker_threads,
            Some(1)
        );
        assert_problems(&[
            (
                "server.worker_threads = 0",
                "server.worker_threads",
                "at least 1",
            ),
            (
                "server.worker_threads = -1",
                "server.worker_threads",
                "non-negative whole number",
            ),
        ]);
        let from_env = load_from_figment(&layers(
            None,
            env(&[("MEIRO_GATE_SERVER__WORKER_THREADS", "1")]),
        ))
        .unwrap();
        assert_eq!(from_env.server.worker_threads, Some(1));
    }

    #[test]
    fn auth_signing_algorithm_is_a_jws_name() {
        assert_eq!(ok("").auth.signing_algorithm, SigningAlgorithm::EdDsa);
        assert_eq!(
            ok(r#"auth.signing_algorithm = "ES256""#)
                .auth
                .signing_algorithm,
            SigningAlgorithm::Es256
        );
        assert_eq!(
            ok(r#"auth.signing_algorithm = "EdDSA""#)
                .auth
                .signing_algorithm,
            SigningAlgorithm::EdDsa
        );
        let from_env = load_from_figment(&layers(
            None,
            env(&[("MEIRO_GATE_AUTH__SIGNING_ALGORITHM", "ES256")]),
        ))
        .unwrap();
        assert_eq!(from_env.auth.signing_algorithm, SigningAlgorithm::Es256);
        assert_problems(&[
            (
                r#"auth.signing_algorithm = "es256""#,
                "auth.signing_algorithm",
                r#"unknown algorithm "es256"; expected "EdDSA" or "ES256""#,
            ),
            (
                r#"auth.signing_algorithm = "HS256""#,
                "auth.signing_algorithm",
                "unknown algorithm",
            ),
            (
                r#"auth.signing_algorithm = "none""#,
                "auth.signing_algorithm",
                "unknown algorithm",
            ),
            (
                "auth.signing_algorithm = [1]",
                "auth.signing_algorithm",
                "expected a string",
            ),
        ]);
        let printed = toml::to_string(&ok(r#"auth.signing_algorithm = "ES256""#).auth).unwrap();
        assert!(
            printed.contains(r#"signing_algorithm = "ES256""#),
            "{printed}"
        );
    }

    #[test]
    fn auth_durations_must_be_positive_and_consistent() {
        assert_problems(&[
            (
                r#"auth.access_token_ttl = "0s""#,
                "auth.access_token_ttl",
                POSITIVE,
            ),
            (
                r#"auth.refresh_window = "0s""#,
                "auth.refresh_window",
                POSITIVE,
            ),
            (
                r#"auth.session_max_age = "0s""#,
                "auth.session_max_age",
                POSITIVE,
            ),
            (
                r#"auth = { access_token_ttl = "2d", session_max_age = "1d" }"#,
                "auth.session_max_age",
                "must be at least auth.access_token_ttl (2d)",
            ),
        ]);
        ok(r#"auth = { access_token_ttl = "1d", session_max_age = "1d" }"#);
    }

    #[test]
    fn cookie_name_must_be_a_token() {
        assert_problem(
            r#"auth.cookie_name = """#,
            "auth.cookie_name",
            "must not be empty",
        );
        for bad in ["a b", "a;b", "a=b", "sé", r#"a\"b"#] {
            let toml = format!(r#"auth.cookie_name = "{bad}""#);
            assert_problem(&toml, "auth.cookie_name", "RFC 6265");
        }
        let c = ok(r#"auth.cookie_name = "__Host-gate.token!""#);
        assert_eq!(c.auth.cookie_name, "__Host-gate.token!");
    }

    #[test]
    fn keys_dir_and_hash_concurrency() {
        assert_problems(&[
            (
                r#"auth.keys_dir = """#,
                "auth.keys_dir",
                "must not be empty",
            ),
            (
                "auth.password_hash_concurrency = 0",
                "auth.password_hash_concurrency",
                "at least 1",
            ),
        ]);
        let c = ok("auth.password_hash_concurrency = 4");
        assert_eq!(c.auth.password_hash_concurrency, 4);
    }

    #[test]
    fn key_rescan_interval_and_activation_delay() {
        let c = ok("");
        assert_eq!(c.auth.keys_rescan_interval, secs(60));
        assert_eq!(c.auth.key_activation_delay, secs(120));
        let c = ok("auth.keys_rescan_interval = \"5s\"\nauth.key_activation_delay = \"0s\"");
        assert_eq!(c.auth.keys_rescan_interval, secs(5));
        assert_eq!(
            c.auth.key_activation_delay,
            Duration::ZERO,
            "0s: one replica"
        );
        assert_problems(&[
            (
                "auth.keys_rescan_interval = \"0s\"",
                "auth.keys_rescan_interval",
                POSITIVE,
            ),
            (
                "auth.key_activation_delay = \"soon\"",
                "auth.key_activation_delay",
                "",
            ),
        ]);
    }

    #[test]
    fn login_throttle_values_must_be_positive() {
        assert_problems(&[
            (
                "auth.login_throttle.per_account = 0",
                "auth.login_throttle.per_account",
                POSITIVE,
            ),
            (
                "auth.login_throttle.per_ip = 0",
                "auth.login_throttle.per_ip",
                POSITIVE,
            ),
            (
                r#"auth.login_throttle.window = "0s""#,
                "auth.login_throttle.window",
                POSITIVE,
            ),
        ]);
    }

    #[test]
    fn bootstrap_needs_an_email_and_a_long_password() {
        let found = problems(
            r#"bootstrap = { admin_email = "admin example.com", admin_password = "short-pw" }"#,
        );
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(found[0].key, "bootstrap.admin_email");
        assert_eq!(found[1].key, "bootstrap.admin_password");
        assert!(found[1].message.contains("at least 12 characters"));
        assert!(found.iter().all(|p| !p.message.contains("short-pw")));

        // The gateway's address rule (`crate::email`), not a looser one of its own: the
        // admin's mail must be deliverable like everyone's.
        for email in [
            "@example.com",
            "admin@",
            "a@b@c",
            "ad min@example.com",
            "admin@localhost",
            "ad..min@example.com",
            "admin@[127.0.0.1]",
        ] {
            let toml = format!(
                r#"bootstrap = {{ admin_email = "{email}", admin_password = "long-enough-pw" }}"#
            );
            assert_problem(&toml, "bootstrap.admin_email", "e-mail address");
        }
        assert_problems(&[
            (
                r#"bootstrap.admin_email = "admin@example.com""#,
                "bootstrap.admin_password",
                "required when bootstrap.admin_email is set",
            ),
            // A password of the wrong type is described by its type, never by its value.
            (
                r#"bootstrap.admin_password = { x = "s3cret" }"#,
                "bootstrap.admin_password",
                "expected a string, found a table",
            ),
        ]);

        let c = ok(
            r#"bootstrap = { admin_email = "admin@example.com", admin_password = "long-enough-pw" }"#,
        );
        assert_eq!(c.bootstrap.admin_email, "admin@example.com");
        assert_eq!(c.bootstrap.admin_password.expose(), "long-enough-pw");
        // No bootstrap: a password alone is not checked.
        ok(r#"bootstrap.admin_password = "x""#);
    }

    #[test]
    fn limits_have_floors() {
        assert_problems(&[
            (
                "limits.max_connections = 0",
                "limits.max_connections",
                POSITIVE,
            ),
            (
                r#"limits.header_read_timeout = "0s""#,
                "limits.header_read_timeout",
                POSITIVE,
            ),
            (
                "limits.max_header_bytes = 1023",
                "limits.max_header_bytes",
                "at least 1024",
            ),
            (
                r#"limits.api_max_body = "0KiB""#,
                "limits.api_max_body",
                POSITIVE,
            ),
            (
                r#"limits.api_max_body = "lots""#,
                "limits.api_max_body",
                "invalid size",
            ),
        ]);
        let c = ok(r#"limits = { max_header_bytes = 1024, api_max_body = "10KB" }"#);
        assert_eq!(c.limits.max_header_bytes, 1024);
        assert_eq!(c.limits.api_max_body, ByteSize::new(10_000));
    }

    #[test]
    fn upstream_names_are_required_and_unique() {
        assert_problems(&[
            (
                r#"upstreams = [{ instances = ["http://a"] }]"#,
                "upstreams[0].name",
                "missing (required)",
            ),
            (
                r#"upstreams = [{ name = "", instances = ["http://a"] }]"#,
                "upstreams[0].name",
                "must not be empty",
            ),
            (
                &format!("{UPSTREAM}{UPSTREAM}"),
                "upstreams[1].name",
                r#"duplicate upstream name "meiro" (also upstreams[0].name)"#,
            ),
        ]);
    }

    #[test]
    fn upstream_instances_are_bare_http_urls() {
        let with =
            |instances: &str| format!(r#"upstreams = [{{ name = "m", instances = {instances} }}]"#);
        let key = "upstreams[0].instances[0]";
        assert_problems(&[
            (
                r#"upstreams = [{ name = "m" }]"#,
                "upstreams[0].instances",
                "missing (required)",
            ),
            (&with("[]"), "upstreams[0].instances", "must not be empty"),
            (
                &with(r#"["http://a", "ftp://b"]"#),
                "upstreams[0].instances[1]",
                "must be an http:// or https:// URL",
            ),
            (&with(r#"["http://a/api"]"#), key, "must not have a path"),
            (&with(r#"["http://a/?x=1"]"#), key, "must not have a query"),
            (&with(r#"["http://u:p@a"]"#), key, "credentials"),
            (&with(r#"["http//a"]"#), key, "invalid URL"),
            (&with("[1]"), key, "invalid URL"),
        ]);
        let c = ok(&with(r#"["http://a:9000/", "http://10.0.0.2:9000"]"#));
        assert_eq!(c.upstreams[0].instances.len(), 2);
    }

    #[test]
    fn upstream_balance_and_timeouts() {
        let with = |extra: &str| format!("{UPSTREAM}{extra}");
        assert_problems(&[
            (
                &with(r#"retry_budget = 1.5"#),
                "upstreams[0].retry_budget",
                "from 0 to 1",
            ),
            (
                &with(
                    r#"eject_base = "10s"
eject_max = "1s""#,
                ),
                "upstreams[0].eject_max",
                "at least eject_base",
            ),
            (
                &with(r#"protocol = "spdy""#),
                "upstreams[0].protocol",
                "unknown protocol",
            ),
            (
                &with(r#"ca_file = "ca.pem""#),
                "upstreams[0].ca_file",
                "only used with https://",
            ),
            (
                &with("health = { interval = \"0s\" }"),
                "upstreams[0].health.interval",
                POSITIVE,
            ),
            (
                &with(r#"balance = "random""#),
                "upstreams[0].balance",
                "unknown balance",
            ),
            (
                &with(r#"connect_timeout = "0s""#),
                "upstreams[0].connect_timeout",
                POSITIVE,
            ),
            (
                &with(r#"response_timeout = "0s""#),
                "upstreams[0].response_timeout",
                POSITIVE,
            ),
        ]);
        let c = ok(&with(
            "balance = \"round_robin\"\nconnect_timeout = \"500ms\"\nresponse_timeout = \"1m\"",
        ));
        assert_eq!(c.upstreams[0].connect_timeout, Duration::from_millis(500));
        assert_eq!(c.upstreams[0].response_timeout, secs(60));
    }

    #[test]
    fn routes_need_a_prefix_and_a_known_upstream() {
        let routes = |routes: &str| format!("routes = [{routes}]\n{UPSTREAM}");
        assert_problems(&[
            (
                &routes(r#"{ upstream = "meiro" }"#),
                "routes[0].prefix",
                "missing (required)",
            ),
            (
                &routes(r#"{ prefix = "api", upstream = "meiro" }"#),
                "routes[0].prefix",
                r#"must start with "/""#,
            ),
            (
                &routes(r#"{ prefix = "/" }"#),
                "routes[0].upstream",
                "missing (required)",
            ),
            (
                &routes(r#"{ prefix = "/admin;x", upstream = "meiro" }"#),
                "routes[0].prefix",
                "must be a plain path",
            ),
            (
                &routes(r#"{ prefix = "/a/../admin", upstream = "meiro" }"#),
                "routes[0].prefix",
                "must be a plain path",
            ),
            (
                &routes(r#"{ prefix = "/a//b", upstream = "meiro" }"#),
                "routes[0].prefix",
                "must be a plain path",
            ),
            (
                &routes(r#"{ prefix = "/%61dmin", upstream = "meiro" }"#),
                "routes[0].prefix",
                "must be a plain path",
            ),
            (
                &routes(r#"{ prefix = "/", upstream = "other" }"#),
                "routes[0].upstream",
                r#"unknown upstream "other""#,
            ),
            (
                &routes(
                    r#"{ prefix = "/", upstream = "meiro" }, { prefix = "/", upstream = "meiro" }"#,
                ),
                "routes[1].prefix",
                r#"duplicate prefix "/" (also routes[0].prefix)"#,
            ),
            // Found by the config_toml fuzz target's invariant: the route table trims the
            // trailing slash, so the second route was accepted and never used.
            (
                &routes(
                    r#"{ prefix = "/api", upstream = "meiro" }, { prefix = "/api/", upstream = "meiro", public = true }"#,
                ),
                "routes[1].prefix",
                r#"duplicate prefix "/api/" (also routes[0].prefix)"#,
            ),
        ]);
        let c = ok(&routes(
            r#"{ prefix = "/public", upstream = "meiro", public = true }"#,
        ));
        assert!(c.routes[0].public);
    }

    #[test]
    fn routes_tunnel_websocket_by_default_and_never_h2c() {
        let routes = |routes: &str| format!("routes = [{routes}]\n{UPSTREAM}");
        let c = ok(&routes(r#"{ prefix = "/", upstream = "meiro" }"#));
        assert_eq!(c.routes[0].upgrades, ["websocket"]);
        let c = ok(&routes(
            r#"{ prefix = "/", upstream = "meiro", upgrades = ["WebSocket", "x-custom/2"] }"#,
        ));
        assert_eq!(c.routes[0].upgrades, ["websocket", "x-custom/2"]);
        let c = ok(&routes(
            r#"{ prefix = "/", upstream = "meiro", upgrades = [] }"#,
        ));
        assert!(c.routes[0].upgrades.is_empty());
        assert_problems(&[
            (
                &routes(r#"{ prefix = "/", upstream = "meiro", upgrades = ["h2c"] }"#),
                "routes[0].upgrades",
                "h2c cannot be tunnelled",
            ),
            (
                &routes(r#"{ prefix = "/", upstream = "meiro", upgrades = ["H2C/1"] }"#),
                "routes[0].upgrades",
                "h2c cannot be tunnelled",
            ),
            (
                &routes(r#"{ prefix = "/", upstream = "meiro", upgrades = ["web socket"] }"#),
                "routes[0].upgrades",
                "not a protocol token",
            ),
        ]);
    }

    #[test]
    fn connection_deadlines_default_and_have_floors() {
        let c = ok("");
        assert_eq!(c.limits.idle_timeout, secs(60));
        assert_eq!(c.limits.body_read_timeout, secs(60));
        assert_eq!(c.limits.http2_keepalive_interval, secs(30));
        assert_eq!(c.limits.http2_keepalive_timeout, secs(20));
        assert!(c.server.underscores_in_headers);
        let c = ok(
            "server.underscores_in_headers = false\n[limits]\nhttp2_keepalive_interval = \"0s\"",
        );
        assert!(!c.server.underscores_in_headers);
        assert!(
            c.limits.http2_keepalive_interval.is_zero(),
            "0s turns PINGs off"
        );
        assert_problems(&[
            (
                r#"limits.idle_timeout = "0s""#,
                "limits.idle_timeout",
                POSITIVE,
            ),
            (
                r#"limits.body_read_timeout = "0s""#,
                "limits.body_read_timeout",
                POSITIVE,
            ),
            (
                r#"limits.http2_keepalive_timeout = "0s""#,
                "limits.http2_keepalive_timeout",
                POSITIVE,
            ),
        ]);
    }

    const OKTA: &str = r#"
        [okta]
        enabled = true
        issuer = "https://example.okta.com/oauth2/default"
        client_id = "0oa-client"
        client_secret = "okta-client-secret-value"
        redirect_uri = "https://app.example.com/okta/callback"
    "#;

    #[test]
    fn okta_defaults_and_full_section() {
        let off = ok("").okta;
        assert!(!off.enabled && off.issuer.is_none() && off.redirect_uri.is_none());
        assert_eq!(off.scopes, ["openid", "email", "profile"]);
        assert_eq!(off.client_auth, OktaClientAuth::ClientSecretBasic);
        assert!(!off.auto_provision && off.require_verified_email);
        assert_eq!(off.default_role, crate::types::Role::User);
        assert_eq!(off.algorithms, ["RS256"]);
        assert_eq!(
            (off.http_timeout, off.discovery_retry, off.jwks_min_refresh),
            (secs(10), secs(30), secs(30))
        );

        let on = ok(OKTA).okta;
        assert!(on.enabled);
        assert_eq!(
            on.issuer.unwrap().as_str(),
            "https://example.okta.com/oauth2/default"
        );
        assert_eq!(on.client_id, "0oa-client");
        assert_eq!(on.client_secret.expose(), "okta-client-secret-value");

        let all = ok(&format!(
            r#"{OKTA}
            scopes = "openid  email groups"
            client_auth = "client_secret_post"
            auto_provision = true
            default_role = "admin"
            require_verified_email = false
            algorithms = ["RS256", "ES256"]
            http_timeout = "3s"
            discovery_retry = "200ms"
            jwks_min_refresh = "1m"
            "#
        ))
        .okta;
        assert_eq!(
            all.scopes,
            ["openid", "email", "groups"],
            "a string splits on spaces"
        );
        assert_eq!(all.client_auth, OktaClientAuth::ClientSecretPost);
        assert!(all.auto_provision && !all.require_verified_email);
        assert_eq!(all.default_role, crate::types::Role::Admin);
        assert_eq!(all.algorithms, ["RS256", "ES256"]);
        assert_eq!(all.http_timeout, secs(3));
        assert_eq!(all.discovery_retry, Duration::from_millis(200));
        assert_eq!(all.jwks_min_refresh, secs(60));
        let array = ok(&format!("{OKTA}\nscopes = [\"openid\", \"email\"]")).okta;
        assert_eq!(array.scopes, ["openid", "email"]);
    }

    #[test]
    fn okta_needs_its_keys_only_when_enabled() {
        let found = problems("[okta]\nenabled = true\nissuer = \"\"");
        let mut keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "okta.client_id",
                "okta.client_secret",
                "okta.issuer",
                "okta.redirect_uri"
            ],
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .all(|p| p.message == "required when okta.enabled = true")
        );
        // Disabled, nothing is required; scopes without openid are then irrelevant too.
        ok("[okta]\nenabled = false\nscopes = \"email\"");
    }

    #[test]
    fn okta_value_rules() {
        let with = |line: &str| format!("{OKTA}\n{line}");
        assert_problems(&[
            (
                &with("scopes = \"email profile\""),
                "okta.scopes",
                "must include \"openid\"",
            ),
            (
                &with("scopes = [\"email\"]"),
                "okta.scopes",
                "must include \"openid\"",
            ),
            (
                &with("algorithms = \"none\""),
                "okta.algorithms",
                "\"none\" is not accepted",
            ),
            (
                &with("algorithms = [\"HS256\"]"),
                "okta.algorithms",
                "\"HS256\" is not accepted",
            ),
            (
                &with("algorithms = [\"RS256\", \"HS512\"]"),
                "okta.algorithms",
                "\"HS512\" is not accepted",
            ),
            (&with("algorithms = []"), "okta.algorithms", "at least one"),
            (
                &with("client_auth = \"private_key_jwt\""),
                "okta.client_auth",
                "unknown client authentication",
            ),
            (
                &with("default_role = \"owner\""),
                "okta.default_role",
                "unknown role",
            ),
            (
                &with("http_timeout = \"0s\""),
                "okta.http_timeout",
                POSITIVE,
            ),
            (
                &with("discovery_retry = \"0s\""),
                "okta.discovery_retry",
                POSITIVE,
            ),
            (
                &with("jwks_min_refresh = \"0s\""),
                "okta.jwks_min_refresh",
                POSITIVE,
            ),
            (
                &with("discovery_retry = 30"),
                "okta.discovery_retry",
                "unit",
            ),
            (
                "[okta]\nissuer = \"ftp://example.okta.com\"",
                "okta.issuer",
                "http",
            ),
            (
                "[okta]\nredirect_uri = \"https://app.example.com/cb?x=1\"",
                "okta.redirect_uri",
                "query",
            ),
        ]);
        // The secret never shows in the printed configuration.
        let printed = serde_json::to_string(&ok(OKTA).okta).unwrap();
        assert!(!printed.contains("okta-client-secret-value"), "{printed}");
    }
}
