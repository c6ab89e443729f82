//! `[[routes]]`.

use super::POSITIVE;
use super::convert::{
    byte_size, duration, flag, non_empty_text, route_prefix, text, whole, word_list,
};
use super::reader::Section;
use crate::config::RouteConfig;
use crate::types::Role;

pub(super) fn read_route(mut s: Section<'_>) -> RouteConfig {
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
    let allow_roles = s.opt("allow_roles", word_list).map(|names| {
        let roles: Vec<Role> = names.iter().filter_map(|n| Role::parse(n)).collect();
        if names.is_empty() || roles.len() != names.len() {
            s.problem(
                "allow_roles",
                "must list one or more of \"admin\", \"user\"",
            );
        }
        roles
    });
    if allow_roles.is_some() && public {
        s.problem(
            "allow_roles",
            "a public route has no user to check; drop `public` or `allow_roles`",
        );
    }
    let methods = s.opt("methods", word_list).map(|names| {
        let methods: Vec<String> = names.iter().map(|m| m.to_ascii_uppercase()).collect();
        let tokens = methods
            .iter()
            .all(|m| http::Method::from_bytes(m.as_bytes()).is_ok());
        if methods.is_empty() || !tokens {
            s.problem(
                "methods",
                "must list one or more HTTP methods, such as [\"GET\", \"POST\"]",
            );
        }
        methods
    });
    let per_user_rate = s.opt("per_user_rate", whole::<u32>);
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
        allow_roles,
        methods,
        per_user_rate,
    }
}
