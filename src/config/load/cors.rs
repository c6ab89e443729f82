//! `[cors]`.

use url::Url;

use super::convert::{duration, flag, non_empty_text, word_list};
use super::reader::Section;
use super::secs;
use crate::config::CorsConfig;

pub(super) fn read_cors(mut s: Section<'_>) -> CorsConfig {
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
