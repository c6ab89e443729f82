use std::ffi::OsString;

use figment::Figment;
use figment::providers::{Format, Toml};

use super::auth::default_hash_concurrency;
use super::env::EnvLayer;
use super::*;
use crate::config::{
    AuthMode, Balance, ByteSize, MailTransport, OktaClientAuth, SigningAlgorithm, UpstreamProtocol,
};

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

mod client_address;
mod routes;

const UPSTREAM: &str = "[[upstreams]]\nname = \"meiro\"\ninstances = [\"http://127.0.0.1:9000\"]\n";

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
        &format!("{UPSTREAM}[auth]\nmode = \"upstream\"\n[auth.upstream]\nupstream = \"meiro\"\n"),
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
    let c = ok("[mail]\ntransport = \"smtp\"\nsmtp_url = \"smtps://u:p@mail.example.com:465\"\n");
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
    let c = ok(include_str!("../../../config/meiro-gate.toml"));
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
    for source in ["", include_str!("../../../config/meiro-gate.toml")] {
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
/// Asserts `key = "0s"` is refused as not positive, for each key.
fn assert_zero_durations_refused(keys: &[&str]) {
    for key in keys {
        assert_problem(&format!("{key} = \"0s\""), key, POSITIVE);
    }
}

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
    assert_zero_durations_refused(&[
        "auth.access_token_ttl",
        "auth.refresh_window",
        "auth.session_max_age",
    ]);
    assert_problems(&[(
        r#"auth = { access_token_ttl = "2d", session_max_age = "1d" }"#,
        "auth.session_max_age",
        "must be at least auth.access_token_ttl (2d)",
    )]);
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
    assert_zero_durations_refused(&["auth.login_throttle.window"]);
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
    assert_zero_durations_refused(&["limits.header_read_timeout"]);
    assert_problems(&[
        (
            "limits.max_connections = 0",
            "limits.max_connections",
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
fn connection_deadlines_default_and_have_floors() {
    let c = ok("");
    assert_eq!(c.limits.idle_timeout, secs(60));
    assert_eq!(c.limits.body_read_timeout, secs(60));
    assert_eq!(c.limits.http2_keepalive_interval, secs(30));
    assert_eq!(c.limits.http2_keepalive_timeout, secs(20));
    assert!(c.server.underscores_in_headers);
    let c =
        ok("server.underscores_in_headers = false\n[limits]\nhttp2_keepalive_interval = \"0s\"");
    assert!(!c.server.underscores_in_headers);
    assert!(
        c.limits.http2_keepalive_interval.is_zero(),
        "0s turns PINGs off"
    );
    assert_zero_durations_refused(&[
        "limits.idle_timeout",
        "limits.body_read_timeout",
        "limits.http2_keepalive_timeout",
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

#[test]
fn choices_are_read_by_their_serialized_names_and_the_message_lists_them() {
    let config = ok(&format!(
        "[auth]\nsigning_algorithm = \"ES256\"\n[mail]\ntransport = \"smtp\"\n\
         smtp_url = \"smtp://mail.example.com\"\n{UPSTREAM}"
    ));
    assert_eq!(config.auth.signing_algorithm, SigningAlgorithm::Es256);
    assert_eq!(config.mail.transport, MailTransport::Smtp);
    // What check-config prints is what is read back.
    let printed = serde_json::to_value(&config).unwrap();
    assert_eq!(printed["auth"]["signing_algorithm"], "ES256");
    assert_eq!(printed["mail"]["transport"], "smtp");

    let found = problems(&format!(
        "[auth]\nsigning_algorithm = \"es256\"\n[okta]\nclient_auth = \"basic\"\n\
         default_role = \"Admin\"\n{UPSTREAM}balance = \"random\"\nprotocol = \"h2\"\n"
    ));
    let messages: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            r#"auth.signing_algorithm: unknown algorithm "es256"; expected "EdDSA" or "ES256""#,
            r#"okta.client_auth: unknown client authentication "basic"; expected "client_secret_basic" or "client_secret_post""#,
            r#"okta.default_role: unknown role "Admin"; expected "admin" or "user""#,
            r#"upstreams[0].balance: unknown balance "random"; expected "round_robin" or "least_request""#,
            r#"upstreams[0].protocol: unknown protocol "h2"; expected "http1" or "http2""#,
        ]
    );
}
