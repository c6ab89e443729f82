//! Logging: tracing to stderr, human-readable on a terminal and JSON otherwise.
//! Nothing logged anywhere carries a token, password or secret. Metrics: [`metrics`].
//!
//! The filter sits in a `reload` layer: `log.filter` is applied once the config is loaded and
//! again on every reload, unless `RUST_LOG` is set, which then wins for the life of the process
//! (one process turned up for debugging stays so across reloads).

mod histogram;
pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable when stderr is a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// Changes the filter of the installed subscriber.
pub struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: `log.filter` is ignored.
    from_env: bool,
}

impl LogFilter {
    /// Applies `log.filter` (already validated by config loading) unless `RUST_LOG` is set.
    pub fn apply(&self, directives: &str) {
        if self.from_env {
            return;
        }
        match EnvFilter::builder().parse(directives) {
            Ok(filter) => {
                if let Err(e) = self.handle.reload(filter) {
                    tracing::error!(error = %e, "log filter not changed");
                }
            }
            Err(e) => tracing::error!(error = %e, "log.filter is invalid; filter not changed"),
        }
    }
}

/// Installs the global subscriber, filtered by `RUST_LOG` (when set and not empty) or else
/// `info` until
/// [`LogFilter::apply`] sets `log.filter`.
pub fn init(format: LogFormat) -> LogFilter {
    // Set but empty counts as unset (a way to hand the filter to `log.filter`).
    let env = std::env::var_os(EnvFilter::DEFAULT_ENV)
        .filter(|v| !v.is_empty())
        .and_then(|_| EnvFilter::try_from_default_env().ok());
    let from_env = env.is_some();
    let (filter, handle) = reload::Layer::new(env.unwrap_or_else(|| EnvFilter::new("info")));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let text = (!json).then(|| fmt::layer().with_writer(std::io::stderr));
    let json = json.then(|| fmt::layer().json().with_writer(std::io::stderr));
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    LogFilter { handle, from_env }
}
