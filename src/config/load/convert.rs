//! Conversions: each turns one untyped value into a typed one or a message saying what is
//! wrong. Messages never quote the value of a secret; the secret readers only use [`text`],
//! whose errors name the type alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::value::Value;
use serde::de::{DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use url::Url;

use crate::config::{ByteSize, duration_serde};
use crate::types::Secret;

/// Messages never quote the value of a secret; the secret readers only use [`text`], whose
/// errors name the type alone.
pub(super) type Convert<T> = fn(&Value) -> Result<T, String>;

pub(super) fn kind(value: &Value) -> &'static str {
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
pub(super) fn text(value: &Value) -> Result<String, String> {
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

pub(super) fn non_empty_text(value: &Value) -> Result<String, String> {
    match text(value)? {
        text if text.is_empty() => Err("must not be empty".to_owned()),
        text => Ok(text),
    }
}

pub(super) fn route_prefix(value: &Value) -> Result<String, String> {
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

pub(super) fn secret(value: &Value) -> Result<Secret, String> {
    text(value).map(Secret::new)
}

pub(super) fn flag(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(_, b) => Ok(*b),
        Value::String(_, s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Value::String(_, s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Value::String(_, s) => Err(format!("expected true or false, found {s:?}")),
        other => Err(format!("expected true or false, found {}", kind(other))),
    }
}

pub(super) fn whole<T: TryFrom<u128>>(value: &Value) -> Result<T, String> {
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

pub(super) fn duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::String(_, s) => duration_serde::parse(s),
        Value::Num(..) => Err("a number has no unit; write a unit, e.g. \"30s\"".to_owned()),
        other => Err(format!(
            "expected a duration such as \"30s\", found {}",
            kind(other)
        )),
    }
}

pub(super) fn socket_addr(value: &Value) -> Result<SocketAddr, String> {
    let text = text(value)?;
    text.trim().parse().map_err(|_| {
        format!(
            "invalid address {text:?}: expected an IP address and port such as \
             \"127.0.0.1:8080\" (host names are not resolved)"
        )
    })
}

pub(super) fn url(value: &Value) -> Result<Url, String> {
    let text = text(value)?;
    Url::parse(text.trim()).map_err(|e| format!("invalid URL {text:?}: {e}"))
}

/// Where browsers and clients reach the gateway.
pub(super) fn web_url(value: &Value) -> Result<Url, String> {
    let url = url(value)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(url)
}

/// An http(s) URL, or `""` for "not set" (operations.md writes empty strings for unset keys).
pub(super) fn web_url_or_empty(value: &Value) -> Result<Option<Url>, String> {
    match value {
        Value::String(_, s) if s.trim().is_empty() => Ok(None),
        other => web_url(other).map(Some),
    }
}

/// A list of words: a TOML array of strings, or one space-separated string.
pub(super) fn word_list(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(_, items) => items.iter().map(non_empty_text).collect(),
        other => Ok(text(other)?.split_whitespace().map(str::to_owned).collect()),
    }
}

/// A list of networks: a TOML array of strings, or one string of entries separated by commas
/// or spaces (how an environment variable gives a list). Each entry is a CIDR (`10.0.0.0/8`,
/// `fd00::/8`) or a bare address, meaning that one host (`/32`, `/128`).
pub(super) fn cidr_list(value: &Value) -> Result<Vec<ipnet::IpNet>, String> {
    let entries: Vec<String> = match value {
        Value::Array(_, items) => items.iter().map(text).collect::<Result<_, _>>()?,
        other => text(other)?
            .split([',', ' ', '\t'])
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    entries.iter().map(|e| cidr(e.trim())).collect()
}

fn cidr(entry: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    let net: ipnet::IpNet = entry.parse().map_err(|_| {
        format!(
            "invalid network {entry:?}: expected a CIDR such as \"10.0.0.0/8\" or an IP address"
        )
    })?;
    // `10.1.2.3/8` is most likely a typo for a host or for another network: say which
    // network it would be instead of silently trusting all of it.
    if net.addr() != net.network() {
        return Err(format!(
            "invalid network {entry:?}: address bits set past the prefix; the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

pub(super) fn byte_size(value: &Value) -> Result<ByteSize, String> {
    match value {
        Value::String(_, s) => s.parse(),
        _ => whole::<u64>(value).map(ByteSize::new),
    }
}

pub(super) fn path(value: &Value) -> Result<PathBuf, String> {
    non_empty_text(value).map(PathBuf::from)
}

pub(super) fn fraction(value: &Value) -> Result<f64, String> {
    let n = match value {
        Value::Num(_, n) => n.to_f64(),
        Value::String(_, s) => s.trim().parse::<f64>().ok(),
        other => return Err(format!("expected a number, found {}", kind(other))),
    };
    n.filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| "expected a number from 0 to 1".to_owned())
}

/// One variant of `T`, written as `T` serializes it (so `check-config` prints exactly what is
/// read back); `what` names the key's meaning in the message, which lists every spelling.
pub(super) fn choice<T: DeserializeOwned>(value: &Value, what: &str) -> Result<T, String> {
    let text = text(value)?;
    let mut variants: &'static [&'static str] = &[];
    T::deserialize(VariantNamed {
        name: &text,
        variants: &mut variants,
    })
    .map_err(|_: serde::de::value::Error| {
        let quoted: Vec<String> = variants.iter().map(|v| format!("{v:?}")).collect();
        let expected = match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => "a known value".to_owned(),
        };
        format!("unknown {what} {text:?}; expected {expected}")
    })
}

/// A deserializer that offers `name` as the variant of a unit enum, and keeps the variant
/// names serde asks with, for the message when it is none of them.
struct VariantNamed<'a> {
    name: &'a str,
    variants: &'a mut &'static [&'static str],
}

impl<'de> Deserializer<'de> for VariantNamed<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _enum: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.variants = variants;
        visitor.visit_enum(self.name.into_deserializer())
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("only unit enums are read by name"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}
