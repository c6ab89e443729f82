//! The provider's HTTP client, as openidconnect's `AsyncHttpClient`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

use super::MAX_RESPONSE_BYTES;

/// The provider's HTTP client: reqwest 0.13 (rustls on aws-lc-rs) as oauth2's
/// `AsyncHttpClient`. Redirects are never followed (a token request with the client secret must
/// not be replayed to wherever a 30x points) and each call is bounded by `okta.http_timeout`.
#[derive(Clone)]
pub(super) struct ProviderHttp(reqwest::Client);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    #[error("response body larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("malformed response: {0}")]
    Response(#[from] http::Error),
}

impl ProviderHttp {
    pub(super) fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("meiro-gate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map(ProviderHttp)
    }
}

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut response = self.0.execute(reqwest::Request::try_from(request)?).await?;
            if response
                .content_length()
                .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
            {
                return Err(HttpError::TooLarge);
            }
            let mut head = http::Response::builder()
                .status(response.status())
                .version(response.version());
            if let Some(headers) = head.headers_mut() {
                *headers = std::mem::take(response.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(HttpError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(head.body(body)?)
        })
    }
}
