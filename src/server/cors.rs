//! CORS for the whole main listener (auth API and data plane), per `[cors]`.
//!
//! Hand-written rather than tower-http's `CorsLayer`, whose defaults this gateway would have
//! to undo: it answers every `OPTIONS` (a real `OPTIONS` to an upstream would never arrive)
//! and adds `Access-Control-Allow-Credentials` and friends for origins it does not allow.
//! The rules here: a preflight (`OPTIONS` + `Origin` + `Access-Control-Request-Method`) is
//! answered by the gateway, with no token needed; an allowed origin gets the CORS headers,
//! any other origin gets none; every other request goes on untouched except for the CORS
//! headers on the response of an allowed origin.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::config::CorsConfig;

/// The `[cors]` policy with its header values built once.
pub struct Cors {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    allow_credentials: bool,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

/// `Vary` on every response the policy could have answered differently for another origin.
static VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

impl Cors {
    pub fn new(config: &CorsConfig) -> Cors {
        let join = |items: &[String]| {
            HeaderValue::from_str(&items.join(", ")).unwrap_or(HeaderValue::from_static(""))
        };
        Cors {
            any_origin: config.allowed_origins.iter().any(|o| o == "*"),
            origins: config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
            allow_credentials: config.allow_credentials,
            allow_methods: join(&config.allowed_methods),
            allow_headers: join(&config.allowed_headers),
            expose_headers: (!config.expose_headers.is_empty())
                .then(|| join(&config.expose_headers)),
            max_age: HeaderValue::from(config.max_age.as_secs()),
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any_origin || self.origins.contains(origin)
    }

    /// The headers every response to an allowed origin carries.
    fn add_origin_headers(&self, headers: &mut HeaderMap, origin: HeaderValue) {
        // The origin is echoed (not `*`) so credentials work and caches key on `Vary`.
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.allow_credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

fn is_preflight(request: &Request) -> bool {
    request.method() == Method::OPTIONS
        && request.headers().contains_key(ORIGIN)
        && request
            .headers()
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn apply(State(cors): State<Arc<Cors>>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(ORIGIN).cloned();
    if is_preflight(&request) {
        let mut response = Response::new(Body::empty());
        let headers = response.headers_mut();
        headers.insert(VARY, VARY_PREFLIGHT.clone());
        match origin.filter(|o| cors.allows(o)) {
            Some(origin) => {
                *response.status_mut() = StatusCode::NO_CONTENT;
                let headers = response.headers_mut();
                cors.add_origin_headers(headers, origin);
                headers.insert(ACCESS_CONTROL_ALLOW_METHODS, cors.allow_methods.clone());
                headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, cors.allow_headers.clone());
                headers.insert(ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
            }
            // No CORS headers: the browser refuses the actual request.
            None => *response.status_mut() = StatusCode::FORBIDDEN,
        }
        return response;
    }
    let mut response = next.run(request).await;
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if cors.allows(&origin) {
            cors.add_origin_headers(headers, origin);
            if let Some(expose) = &cors.expose_headers {
                headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(&CorsConfig {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            allowed_methods: vec!["GET".into(), "POST".into()],
            allowed_headers: vec!["X-Access-Token".into()],
            expose_headers: vec![],
            allow_credentials: credentials,
            max_age: Duration::from_secs(600),
        })
    }

    #[test]
    fn origins_match_exactly_or_any() {
        let c = cors(&["https://app.example.com"], true);
        assert!(c.allows(&HeaderValue::from_static("https://app.example.com")));
        assert!(!c.allows(&HeaderValue::from_static("https://app.example.com.evil")));
        assert!(!c.allows(&HeaderValue::from_static("http://app.example.com")));
        let any = cors(&["*"], false);
        assert!(any.allows(&HeaderValue::from_static("https://whatever.test")));
    }

    #[test]
    fn preflight_needs_origin_and_request_method() {
        let request = |headers: &[(&'static str, &'static str)]| {
            let mut r = Request::new(Body::empty());
            *r.method_mut() = Method::OPTIONS;
            for (k, v) in headers {
                r.headers_mut().insert(*k, HeaderValue::from_static(v));
            }
            r
        };
        assert!(is_preflight(&request(&[
            ("origin", "https://a.test"),
            ("access-control-request-method", "POST")
        ])));
        assert!(!is_preflight(&request(&[("origin", "https://a.test")])));
        assert!(!is_preflight(&request(&[])));
    }
}
