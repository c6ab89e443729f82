//! Reloading from the config file, as `serve` does on SIGHUP and when the file changes: the
//! config is loaded exactly as at start (same file, same environment), an invalid one is
//! refused with each problem logged, a valid one goes to [`RunningApp::reload`].

use std::path::Path;
use std::time::Duration;

use super::RunningApp;
use crate::config;

/// How long changed contents must stay the same before the watcher applies them.
const SETTLE: Duration = Duration::from_millis(150);

impl RunningApp {
    /// Loads the config from `path` (the `--config` given at start) and applies it; returns
    /// whether it was applied. Never panics on a bad file: every problem is logged by key.
    pub fn reload_from_file(&self, path: Option<&Path>) -> bool {
        if let Some(file) = config::file(path) {
            // What the watcher compares with: a SIGHUP reload is not repeated by it.
            *self.seen_file() = std::fs::read(file).ok();
        }
        let config = match config::load(path) {
            Ok(config) => config,
            Err(e) => {
                for problem in &e.problems {
                    tracing::error!(key = %problem.key, problem = %problem.message, "invalid config");
                }
                tracing::error!(
                    problems = e.problems.len(),
                    "reload refused: the config is invalid; keeping the running one"
                );
                return false;
            }
        };
        match self.reload(config) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "reload refused; keeping the running config");
                false
            }
        }
    }

    /// Every `interval`, compares the config file's contents with what was last loaded and
    /// reloads when they differ. Contents, not the modification time: a Kubernetes ConfigMap
    /// update swaps a symlink, and two edits within the clock's granularity look alike.
    /// A file that cannot be read is skipped (an editor replacing it), and changed contents are
    /// applied only once they have stayed the same for [`SETTLE`]. Never returns; with a
    /// zero interval or no file it only waits.
    pub async fn watch_config_file(&self, path: Option<&Path>, interval: Duration) {
        let Some(file) = config::file(path).filter(|_| !interval.is_zero()) else {
            return std::future::pending().await;
        };
        *self.seen_file() = std::fs::read(&file).ok();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Ok(now) = tokio::fs::read(&file).await else {
                continue;
            };
            if self.seen_file().as_ref() == Some(&now) {
                continue;
            }
            // A file written in place (an editor, `cp`) can be caught half written, and half
            // a config may well parse (say, with no routes yet): apply only contents that have
            // stopped changing.
            tokio::time::sleep(SETTLE).await;
            if tokio::fs::read(&file).await.ok().as_ref() != Some(&now) {
                continue;
            }
            tracing::info!(file = %file.display(), "config file changed: reloading");
            self.reload_from_file(path);
        }
    }

    fn seen_file(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.seen_file.lock().unwrap_or_else(|e| e.into_inner())
    }
}
