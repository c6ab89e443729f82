//! The file outbox: each message becomes one `.eml` file in `mail.dir`, written to a temporary
//! name and renamed, so a reader (an operator, a test) never sees half a message.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lettre::message::Mailbox;
use tokio::io::AsyncWriteExt;

use super::{Message, SendError, Transport, compose};

pub struct FileTransport {
    dir: PathBuf,
    from: Mailbox,
}

impl FileTransport {
    /// Creates `dir` (and its parents) if missing.
    pub async fn new(dir: &Path, from: Mailbox) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        Ok(Self {
            dir: dir.to_owned(),
            from,
        })
    }
}

#[async_trait::async_trait]
impl Transport for FileTransport {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let bytes = compose(&self.from, message)?.formatted();
        // Milliseconds first so that a directory listing sorts (roughly) by sending time; the
        // UUID keeps names unique. The temporary name is hidden and lacks `.eml`, so readers
        // that pick `*.eml` skip it.
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let name = format!("{millis:013}-{}.eml", uuid::Uuid::new_v4());
        let path = self.dir.join(&name);
        let temp = self.dir.join(format!(".{name}.tmp"));
        if let Err(e) = write_then_rename(&temp, &path, &bytes).await {
            let _ = tokio::fs::remove_file(&temp).await;
            // A full disk or a permission fixed by the operator may pass: transient.
            return Err(SendError::transient(format!(
                "writing {}: {e}",
                path.display()
            )));
        }
        Ok(())
    }
}

async fn write_then_rename(temp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = tokio::fs::File::create(temp).await?;
    file.write_all(bytes).await?;
    // Flushed before the rename, so a crash cannot leave a complete name over partial content.
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(temp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_one_complete_eml_per_message() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("outbox/nested");
        let from: Mailbox = "Meiro <no-reply@meiro.example>".parse().unwrap();
        let transport = FileTransport::new(&dir, from).await.unwrap();
        let message = Message {
            to: "ann@example.com".to_owned(),
            subject: "Hello there".to_owned(),
            text: "Open https://meiro.example/invite?token=abc123 now\n".to_owned(),
            html: "<p><a href=\"https://meiro.example/invite?token=abc123\">x</a></p>\n".to_owned(),
        };
        transport.send(&message).await.unwrap();
        transport.send(&message).await.unwrap();

        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.ends_with(".eml") && !n.starts_with('.'))
        );

        let eml = std::fs::read_to_string(dir.join(&names[0])).unwrap();
        let (head, body) = eml.split_once("\r\n\r\n").expect("header/body separator");
        for expected in [
            "From: Meiro <no-reply@meiro.example>",
            "To: ann@example.com",
            "Subject: Hello there",
            "MIME-Version: 1.0",
            "Message-ID: <",
            "Date: ",
        ] {
            assert!(head.contains(expected), "{expected:?} missing in\n{head}");
        }
        let boundary = head
            .split("boundary=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("multipart boundary");
        assert!(head.contains("multipart/alternative"), "{head}");
        let parts: Vec<&str> = body.split(&format!("--{boundary}")).collect();
        // preamble, text, html, closing "--"
        assert_eq!(parts.len(), 4, "{body}");
        assert!(
            parts[1].contains("Content-Type: text/plain; charset=utf-8"),
            "{}",
            parts[1]
        );
        assert!(parts[1].contains("https://meiro.example/invite?token=abc123"));
        assert!(
            parts[2].contains("Content-Type: text/html; charset=utf-8"),
            "{}",
            parts[2]
        );
        assert!(parts[2].contains("<a href=\"https://meiro.example/invite?token=abc123\">"));
        assert!(parts[3].starts_with("--"));
    }

    #[tokio::test]
    async fn invalid_recipient_is_permanent_and_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let from: Mailbox = "no-reply@meiro.example".parse().unwrap();
        let transport = FileTransport::new(root.path(), from).await.unwrap();
        let message = Message {
            to: "not an address".to_owned(),
            subject: "s".to_owned(),
            text: "t".to_owned(),
            html: "h".to_owned(),
        };
        let err = transport.send(&message).await.unwrap_err();
        assert!(err.permanent, "{err:?}");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
