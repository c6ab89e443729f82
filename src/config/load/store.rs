//! `[store]`.

use super::POSITIVE;
use super::convert::{duration, text};
use super::reader::Section;
use crate::config::StoreConfig;
use crate::types::Secret;

pub(super) fn read_store(mut s: Section<'_>) -> StoreConfig {
    let url = s.get("url", "sqlite://data/meiro-gate.db".to_owned(), text);
    // The message never repeats the URL: it may carry a password.
    if let Err(why) = crate::config::store_url::check(&url) {
        s.problem("url", why);
    }
    let timeout = s.get(
        "timeout",
        crate::config::store_url::DEFAULT_TIMEOUT,
        duration,
    );
    s.check("timeout", !timeout.is_zero(), POSITIVE);
    StoreConfig {
        url: Secret::url(url),
        timeout,
    }
}
