//! `[okta]`.

use figment::value::Value;

use crate::types::Role;

use super::convert::{choice, duration, flag, secret, text, web_url_or_empty, word_list};
use super::reader::Section;
use super::{POSITIVE, secs};
use crate::config::{OktaClientAuth, OktaConfig};
use crate::types::Secret;

/// Signature algorithms an id_token may use: asymmetric only. `none` and HS* (an HMAC keyed
/// with something public) are never on the list.
const OIDC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

pub(super) fn read_okta(mut s: Section<'_>) -> OktaConfig {
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
    let default_role = s.get("default_role", Role::User, role);
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

fn client_auth(value: &Value) -> Result<OktaClientAuth, String> {
    choice(value, "client authentication")
}

fn role(value: &Value) -> Result<Role, String> {
    choice(value, "role")
}
