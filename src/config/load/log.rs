//! `[log]` and `[audit]`: what the gateway writes down.

use super::convert::{duration, text};
use super::reader::Section;
use super::{POSITIVE, secs};
use crate::config::{AuditConfig, LogConfig};

pub(super) fn read_log(mut s: Section<'_>) -> LogConfig {
    let filter = s.get("filter", "info".to_owned(), text);
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&filter) {
        s.problem("filter", format!("not a valid log filter: {e}"));
    }
    LogConfig { filter }
}

pub(super) fn read_audit(mut s: Section<'_>) -> AuditConfig {
    let retention = s.get("retention", secs(90 * 24 * 3600), duration);
    s.check("retention", !retention.is_zero(), POSITIVE);
    AuditConfig { retention }
}
