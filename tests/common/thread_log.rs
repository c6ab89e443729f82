//! The gateway's log lines, as the test sees them: tracing output routed into a buffer of the
//! thread that wrote it. Each `#[tokio::test]` runs its own current-thread runtime, so the
//! gateway it starts logs on the test's thread, and tests running in parallel in one binary
//! do not see each other's lines.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Once;

thread_local! {
    static LOGS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct ThreadLog;

impl Write for ThreadLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.with(|logs| logs.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How the captured lines are written.
pub enum Format {
    Json,
    Text,
}

/// Installs the capture once per test binary: what `filter` lets through, in `format`.
/// (The first call's arguments win; a binary uses one setting.)
pub fn capture(filter: &'static str, format: Format) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| ThreadLog);
        match format {
            Format::Json => builder.json().init(),
            Format::Text => builder.init(),
        }
    });
}

/// Everything logged on this thread so far.
pub fn logged() -> String {
    LOGS.with(|logs| String::from_utf8_lossy(&logs.borrow()).into_owned())
}

/// Everything logged on this thread since the last call.
pub fn take() -> String {
    LOGS.with(|logs| String::from_utf8_lossy(&std::mem::take(&mut *logs.borrow_mut())).into_owned())
}
