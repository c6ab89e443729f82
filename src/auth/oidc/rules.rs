//! The checks of an id_token and a login that openidconnect leaves to the client, and the
//! small conversions around them: pure functions, unit-tested here.

use chrono::{DateTime, Utc};
use openidconnect::core::CoreJwsSigningAlgorithm;
use openidconnect::{IssuerUrl, JwsSigningAlgorithm, Nonce, RequestTokenError};
use url::Url;

use crate::auth::normalize_email;
use crate::store::UnixTime;

use super::LEEWAY_SECS;

/// `okta.algorithms` as openidconnect's type, refusing `none` and HMAC whatever the config
/// layer let through.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<CoreJwsSigningAlgorithm>, String> {
    if names.is_empty() {
        return Err("at least one algorithm is required".into());
    }
    names
        .iter()
        .map(|name| {
            let alg: CoreJwsSigningAlgorithm =
                serde_json::from_value(serde_json::Value::String(name.clone()))
                    .map_err(|_| format!("unknown algorithm {name:?}"))?;
            if alg == CoreJwsSigningAlgorithm::None || alg.uses_shared_secret() {
                return Err(format!("{name:?} is never accepted"));
            }
            Ok(alg)
        })
        .collect()
}

/// The issuer as the provider writes it. `url::Url` renders a bare origin with a `/`
/// (`https://x.okta.com/`), while issuers such as Okta's org server are `https://x.okta.com`:
/// for a bare origin the slash is dropped; any other path is kept exactly.
pub fn issuer_url(issuer: &Url) -> Result<IssuerUrl, url::ParseError> {
    let text = if issuer.path() == "/" && issuer.query().is_none() && issuer.fragment().is_none() {
        issuer.as_str().trim_end_matches('/')
    } else {
        issuer.as_str()
    };
    IssuerUrl::new(text.to_owned())
}

/// The authorization request (OpenID Connect Core §3.1.2.1), appended to any query the
/// endpoint already has.
pub fn authorization_link(
    endpoint: &Url,
    client_id: &str,
    scope: &str,
    redirect_uri: &str,
    state: &str,
) -> Url {
    let mut link = endpoint.clone();
    link.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("scope", scope)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state);
    link
}

/// OpenID Connect Core §3.1.3.7 steps 4–5: with several audiences `azp` must be present, and
/// a present `azp` must be this client.
pub fn check_authorized_party(
    audiences: &[&str],
    azp: Option<&str>,
    client_id: &str,
) -> Result<(), String> {
    match azp {
        Some(azp) if azp != client_id => Err(format!("azp {azp:?} is not this client")),
        None if audiences.len() > 1 => Err("several audiences but no azp".into()),
        _ => Ok(()),
    }
}

/// The identity: a well-formed `email`, verified unless the operator said otherwise.
/// Returns it trimmed and lower-cased.
pub fn check_email(
    email: Option<&str>,
    verified: Option<bool>,
    require_verified: bool,
) -> Result<String, String> {
    let email = normalize_email(email.ok_or("no email claim")?);
    // The gateway's one address rule (`crate::email`): a user provisioned from this claim
    // gets password-reset mail like any other.
    if let Err(e) = crate::email::parse(&email) {
        return Err(format!(
            "the email claim is not an email address the gateway accepts: {e}"
        ));
    }
    if require_verified && verified != Some(true) {
        return Err(format!("email {email} is not verified"));
    }
    Ok(email)
}

/// `iat` may be ahead of our clock by at most [`LEEWAY_SECS`].
pub fn check_issue_time(iat: UnixTime, now: UnixTime) -> Result<(), String> {
    if iat > now + LEEWAY_SECS {
        Err(format!("issued {}s in the future", iat - now))
    } else {
        Ok(())
    }
}

pub(super) fn unix_to_datetime(secs: UnixTime) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// No nonce is sent (see the module doc), so none is checked.
pub(super) fn no_nonce_sent(_: Option<&Nonce>) -> Result<(), String> {
    Ok(())
}

/// An error with its sources, for the log.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A token request failure for the log, never with the response body (it holds tokens).
/// openidconnect's parse errors leave out the raw id_token on purpose; serde's messages
/// quote at most a mistyped scalar value.
pub(super) fn token_error<
    RE: std::error::Error + 'static,
    T: openidconnect::ErrorResponse + 'static,
>(
    error: &RequestTokenError<RE, T>,
) -> String {
    match error {
        RequestTokenError::Parse(e, _body) => {
            format!("the token response does not parse: {e}")
        }
        other => error_chain(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn algorithms_never_include_none_or_hmac() {
        assert_eq!(
            parse_algorithms(&names(&["RS256", "ES256", "EdDSA"])).unwrap(),
            [
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::EcdsaP256Sha256,
                CoreJwsSigningAlgorithm::EdDsa,
            ]
        );
        for bad in ["none", "HS256", "HS384", "HS512", "RS257", ""] {
            assert!(parse_algorithms(&names(&[bad])).is_err(), "{bad}");
            assert!(parse_algorithms(&names(&["RS256", bad])).is_err(), "{bad}");
        }
        assert!(parse_algorithms(&[]).is_err());
    }

    #[test]
    fn issuer_keeps_paths_but_not_a_bare_origin_slash() {
        let issuer = |s: &str| {
            issuer_url(&Url::parse(s).unwrap())
                .unwrap()
                .as_str()
                .to_owned()
        };
        assert_eq!(issuer("https://x.okta.com"), "https://x.okta.com");
        assert_eq!(issuer("https://x.okta.com/"), "https://x.okta.com");
        assert_eq!(
            issuer("https://x.okta.com/oauth2/default"),
            "https://x.okta.com/oauth2/default"
        );
        assert_eq!(
            issuer("https://login.example/tenant/"),
            "https://login.example/tenant/"
        );
        // Discovery appends to it correctly either way.
        let url = issuer_url(&Url::parse("https://x.okta.com").unwrap()).unwrap();
        assert_eq!(
            url.join(".well-known/openid-configuration")
                .unwrap()
                .as_str(),
            "https://x.okta.com/.well-known/openid-configuration"
        );
    }

    #[test]
    fn authorization_link_carries_every_parameter_encoded() {
        let endpoint =
            Url::parse("https://x.okta.com/oauth2/default/v1/authorize?idp=abc").unwrap();
        let link = authorization_link(
            &endpoint,
            "client 1",
            "openid email profile",
            "https://app.example/okta?x=1&y=2",
            "st8",
        );
        assert_eq!(link.path(), "/oauth2/default/v1/authorize");
        let pairs: Vec<(String, String)> = link.query_pairs().into_owned().collect();
        let expect = [
            ("idp", "abc"),
            ("client_id", "client 1"),
            ("response_type", "code"),
            ("scope", "openid email profile"),
            ("redirect_uri", "https://app.example/okta?x=1&y=2"),
            ("state", "st8"),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(pairs, expect);
    }

    #[test]
    fn authorized_party_rules() {
        let me = "gate";
        assert!(check_authorized_party(&["gate"], None, me).is_ok());
        assert!(check_authorized_party(&["gate"], Some("gate"), me).is_ok());
        assert!(check_authorized_party(&["gate"], Some("other"), me).is_err());
        assert!(check_authorized_party(&["gate", "api"], Some("gate"), me).is_ok());
        assert!(check_authorized_party(&["gate", "api"], None, me).is_err());
        assert!(check_authorized_party(&["gate", "api"], Some("api"), me).is_err());
    }

    #[test]
    fn email_rules() {
        assert_eq!(
            check_email(Some(" Ann@Example.COM "), Some(true), true).unwrap(),
            "ann@example.com"
        );
        assert!(check_email(None, Some(true), true).is_err());
        assert!(check_email(Some("not-an-email"), Some(true), true).is_err());
        assert!(check_email(Some("a@b.co"), Some(false), true).is_err());
        assert!(check_email(Some("a@b.co"), None, true).is_err());
        assert_eq!(
            check_email(Some("a@b.co"), Some(false), false).unwrap(),
            "a@b.co"
        );
        assert_eq!(check_email(Some("a@b.co"), None, false).unwrap(), "a@b.co");
        assert!(check_email(None, None, false).is_err());
    }

    #[test]
    fn issue_time_leeway() {
        let now = 1_700_000_000;
        assert!(check_issue_time(now, now).is_ok());
        assert!(check_issue_time(now - 3600, now).is_ok());
        assert!(check_issue_time(now + LEEWAY_SECS, now).is_ok());
        assert!(check_issue_time(now + LEEWAY_SECS + 1, now).is_err());
    }
}
