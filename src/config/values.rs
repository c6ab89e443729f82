//! Value types with their own text forms: [`Secret`] (never printed), [`ByteSize`] (`"64KiB"`)
//! and durations (`"8h"`, see [`duration_serde`]).

use std::fmt;
use std::str::FromStr;

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

/// A number of bytes, written in configuration as `"64KiB"`, `"100MiB"`, `"10KB"`, `"512"` or a
/// plain integer, and printed in the largest unit that divides it exactly, so it round-trips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn new(bytes: u64) -> Self {
        Self(bytes)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Saturates on 32-bit targets, where such a size could not be buffered anyway.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    /// Units are case-insensitive: `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) and
    /// `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024); no unit means bytes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|size| Self(size.as_u64()))
            .map_err(|_| format!("invalid size {s:?}; write e.g. \"64KiB\", \"100MiB\" or \"512\""))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 8] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
            (1_000_000_000_000, "TB"),
            (1_000_000_000, "GB"),
            (1_000_000, "MB"),
            (1_000, "KB"),
        ];
        let bytes = self.0;
        match UNITS
            .iter()
            .find(|(factor, _)| bytes != 0 && bytes.is_multiple_of(*factor))
        {
            Some((factor, unit)) => write!(f, "{}{unit}", bytes / factor),
            None => write!(f, "{bytes}B"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Durations as configuration text: `"500ms"`, `"30s"`, `"10m"`, `"8h"`, `"30d"`.
/// Use as `#[serde(with = "duration_serde")]` on a `Duration` field (serialize only).
pub mod duration_serde {
    use std::time::Duration;

    use serde::Serializer;

    /// For `Option<Duration>` fields: `None` is left out of the printed config.
    pub mod option {
        use std::time::Duration;

        use serde::Serializer;

        pub fn serialize<S: Serializer>(
            duration: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match duration {
                Some(d) => serializer.collect_str(&super::format(*d)),
                None => serializer.serialize_none(),
            }
        }
    }

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format(*duration))
    }

    /// Compact form, largest units first: `"8h"`, `"1h30m"`, `"30d"`, `"1s500ms"`, `"0s"`.
    /// Always accepted back by [`parse`].
    pub fn format(duration: Duration) -> String {
        const UNITS: [(u128, &str); 7] = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let mut rest = duration.as_nanos();
        if rest == 0 {
            return "0s".to_owned();
        }
        let mut out = String::new();
        for (factor, unit) in UNITS {
            if rest >= factor {
                out.push_str(&format!("{}{unit}", rest / factor));
                rest %= factor;
            }
        }
        out
    }

    /// Parses humantime syntax (`"30s"`, `"10m"`, `"8h"`, `"30d"`, `"1h 30m"`). A bare number is
    /// refused: `30` could mean seconds or milliseconds, and guessing wrong fails silently.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text.parse::<f64>().is_ok() {
            return Err(format!("{text:?} has no unit; write a unit, e.g. \"30s\""));
        }
        humantime::parse_duration(text).map_err(|e| {
            format!("invalid duration {text:?} ({e}); write e.g. \"30s\", \"10m\", \"8h\"")
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[test]
    fn byte_size_parses_units_and_round_trips() {
        let cases = [
            ("64KiB", 64 << 10),
            ("100MiB", 100 << 20),
            ("1GiB", 1 << 30),
            ("512", 512),
            ("10KB", 10_000),
            ("2 mib", 2 << 20),
        ];
        for (text, bytes) in cases {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.as_u64(), bytes, "{text}");
        }
        for bytes in [
            0,
            1,
            512,
            1000,
            1024,
            1536,
            65_536,
            10_000,
            1 << 30,
            123_456_789,
        ] {
            let size = ByteSize::new(bytes);
            let back: ByteSize = size.to_string().parse().unwrap();
            assert_eq!(back, size, "{size}");
        }
        assert_eq!(ByteSize::new(64 << 10).to_string(), "64KiB");
        assert_eq!(ByteSize::new(10_000).to_string(), "10KB");
        assert_eq!(ByteSize::new(1536).to_string(), "1536B");
        assert_eq!(
            serde_json::to_string(&ByteSize::new(100 << 20)).unwrap(),
            r#""100MiB""#
        );
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("10 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations_print_compactly_and_parse_back() {
        let cases = [
            (Duration::from_secs(8 * 3600), "8h"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(30 * 86_400), "30d"),
            (Duration::from_secs(90 * 60), "1h30m"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::ZERO, "0s"),
        ];
        for (duration, text) in cases {
            assert_eq!(duration_serde::format(duration), text);
            assert_eq!(duration_serde::parse(text), Ok(duration), "{text}");
        }
        assert_eq!(duration_serde::parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(
            duration_serde::parse("500ms"),
            Ok(Duration::from_millis(500))
        );
    }

    #[test]
    fn duration_without_unit_is_refused() {
        let err = duration_serde::parse("30").unwrap_err();
        assert!(err.contains("write a unit, e.g. \"30s\""), "{err}");
        assert!(duration_serde::parse("soon").is_err());
    }
}
