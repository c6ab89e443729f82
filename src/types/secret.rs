//! [`Secret`]: a string that never reaches logs or `check-config` output.

use std::fmt;

use serde::{Serialize, Serializer};
use url::Url;

const REDACTED: &str = "<redacted>";

/// A string that must not reach logs or `check-config` output.
///
/// `Debug` prints `Secret(<redacted>)` (or `Secret(<empty>)`). `Serialize` writes `""` when empty
/// and `"<redacted>"` otherwise, except for secrets built with [`Secret::url`]: those print
/// [`Secret::redacted_url`], so an operator can still see which database is configured.
/// URL-ness is declared by the constructor rather than guessed from the value, because a
/// password such as `pa55://word` parses as a URL and would otherwise be printed.
#[derive(Clone, Default)]
pub struct Secret {
    value: String,
    is_url: bool,
}

impl Secret {
    /// An opaque secret (a password, a client secret): always serialized as `"<redacted>"`.
    pub fn new(value: String) -> Self {
        Self {
            value,
            is_url: false,
        }
    }

    /// A connection URL that may carry credentials: serialized as [`Secret::redacted_url`].
    pub fn url(value: String) -> Self {
        Self {
            value,
            is_url: true,
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The value as a URL with its password, and the values of query parameters whose name
    /// suggests a credential (`password`, `sslpassword`, `token`, ...), replaced by `<redacted>`.
    /// A URL without credentials comes back as is; a value that is not a URL at all comes back
    /// as `"<redacted>"` (or `""` when empty), since it might be a bare password.
    pub fn redacted_url(&self) -> String {
        if self.value.is_empty() {
            return String::new();
        }
        let Ok(mut url) = Url::parse(&self.value) else {
            return REDACTED.to_owned();
        };
        let query = url.query().map(redact_query);
        let fragment = url.fragment().map(str::to_owned);
        url.set_query(None);
        url.set_fragment(None);
        // `set_password` would percent-encode `<` and `>`, so set a plain marker and swap it in
        // the text. ':' and '@' are always encoded inside the user name, so the first
        // ":MARKER@" is the password.
        const MARKER: &str = "REDACTEDPASSWORD";
        let mut out = url.as_str().to_owned();
        if url.password().is_some() && url.set_password(Some(MARKER)).is_ok() {
            out = url
                .as_str()
                .replacen(&format!(":{MARKER}@"), &format!(":{REDACTED}@"), 1);
        }
        if let Some(query) = query {
            out.push('?');
            out.push_str(&query);
        }
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(&fragment);
        }
        out
    }
}

/// Replaces the value of every `name=value` pair whose (decoded) name looks like a credential.
fn redact_query(query: &str) -> String {
    const SENSITIVE: [&str; 4] = ["pass", "secret", "token", "key"];
    query
        .split('&')
        .map(|pair| {
            let raw_name = pair.split('=').next().unwrap_or_default();
            let sensitive = url::form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_some_and(|(name, _)| {
                    let name = name.to_ascii_lowercase();
                    SENSITIVE.iter().any(|s| name.contains(s))
                });
            if sensitive {
                format!("{raw_name}={REDACTED}")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.is_empty() { "<empty>" } else { REDACTED };
        write!(f, "Secret({shown})")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_empty() {
            serializer.serialize_str("")
        } else if self.is_url {
            serializer.serialize_str(&self.redacted_url())
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("hunter2-hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(serde_json::to_string(&secret).unwrap(), r#""<redacted>""#);
        assert_eq!(secret.expose(), "hunter2-hunter2");

        // Looks like a URL, but was not declared as one.
        let secret = Secret::new("pa55://word12345".to_owned());
        assert_eq!(serde_json::to_string(&secret).unwrap(), r#""<redacted>""#);

        let empty = Secret::default();
        assert!(empty.is_empty());
        assert_eq!(format!("{empty:?}"), "Secret(<empty>)");
        assert_eq!(serde_json::to_string(&empty).unwrap(), r#""""#);
    }

    #[test]
    fn url_secret_prints_without_credentials() {
        let url = Secret::url("postgres://user:s3cret@db.internal:5432/gate".to_owned());
        assert_eq!(format!("{url:?}"), "Secret(<redacted>)");
        let json = serde_json::to_string(&url).unwrap();
        assert_eq!(
            json,
            r#""postgres://user:<redacted>@db.internal:5432/gate""#
        );

        let plain = Secret::url("sqlite://data/meiro-gate.db".to_owned());
        assert_eq!(plain.redacted_url(), "sqlite://data/meiro-gate.db");
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#""sqlite://data/meiro-gate.db""#
        );

        let query = Secret::url("postgres://db/gate?sslmode=require&password=s3cret".to_owned());
        assert_eq!(
            query.redacted_url(),
            "postgres://db/gate?sslmode=require&password=<redacted>"
        );

        // A user name containing the marker text must not confuse the substitution.
        let odd = Secret::url("postgres://REDACTEDPASSWORD:s3cret@db/gate".to_owned());
        assert_eq!(
            odd.redacted_url(),
            "postgres://REDACTEDPASSWORD:<redacted>@db/gate"
        );

        assert_eq!(
            Secret::url("not a url".to_owned()).redacted_url(),
            "<redacted>"
        );
        assert_eq!(Secret::url(String::new()).redacted_url(), "");
    }
}
