//! Reading streamed responses: the next chunk, a stream that keeps flowing, a stream cut.

use std::time::{Duration, Instant};

/// The next chunk of `response`, within 5 s.
pub async fn next_chunk(
    response: &mut reqwest::Response,
) -> Result<reqwest::Result<Option<bytes::Bytes>>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(5), response.chunk()).await
}

/// `response` still delivers chunks.
pub async fn assert_flowing(response: &mut reqwest::Response) {
    assert!(
        matches!(next_chunk(response).await, Ok(Ok(Some(_)))),
        "the stream flows on"
    );
}

/// `response` ends in an error (a cut, not a complete body) within `within` of `since`; it
/// may deliver what was already on its way until then.
pub async fn assert_cut(response: &mut reqwest::Response, since: Instant, within: Duration) {
    let cut = loop {
        match tokio::time::timeout(within, response.chunk()).await {
            Err(_) => panic!("the stream went quiet instead of being cut"),
            Ok(Ok(Some(_))) if since.elapsed() < within => continue,
            Ok(Ok(Some(_))) => panic!("still streaming {:?} later", since.elapsed()),
            Ok(Ok(None)) => panic!("ended as if complete: a cut must not look like the end"),
            Ok(Err(_)) => break since.elapsed(),
        }
    };
    assert!(cut < within, "cut after {cut:?}");
}
