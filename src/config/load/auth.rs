//! `[auth]` (with `[auth.upstream]` and the throttles) and `[bootstrap]`.

use std::path::PathBuf;

use figment::value::Value;

use super::convert::{
    choice, duration, flag, non_empty_text, path, route_prefix, secret, text, whole,
};
use super::reader::Section;
use super::{POSITIVE, secs};
use crate::config::{
    AuthConfig, AuthMode, AuthUpstreamConfig, BootstrapConfig, SigningAlgorithm, ThrottleConfig,
    duration_serde,
};
use crate::types::Secret;

fn auth_mode(value: &Value) -> Result<AuthMode, String> {
    choice(value, "mode")
}

/// Exactly the JWS name: `alg` values are case-sensitive (RFC 7515 §4.1.1).
fn signing_algorithm(value: &Value) -> Result<SigningAlgorithm, String> {
    choice(value, "algorithm")
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

pub(super) fn read_auth(mut s: Section<'_>) -> AuthConfig {
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
pub(super) fn default_hash_concurrency() -> usize {
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

pub(super) fn read_bootstrap(mut s: Section<'_>) -> BootstrapConfig {
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
