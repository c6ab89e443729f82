//! SMTP delivery through lettre: `smtp://` upgrades with STARTTLS when the server offers it,
//! `smtps://` speaks TLS from the first byte; TLS is rustls on the aws-lc-rs provider.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use percent_encoding::percent_decode_str;
use url::{Host, Url};

use super::{Message, SendError, Transport, compose};

/// Port of plain SMTP (RFC 5321), the default for `smtp://`.
const SMTP_PORT: u16 = 25;
/// Port of implicit-TLS submission (RFC 8314), the default for `smtps://`.
const SMTPS_PORT: u16 = 465;

/// What is wrong with `mail.smtp_url`. Never contains the URL: it may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum SmtpUrlError {
    #[error("not a URL")]
    NotAUrl,
    #[error("scheme must be smtp or smtps, not {0:?}")]
    Scheme(String),
    #[error("has no host")]
    NoHost,
    // lettre's `?tls=required` and the like are not supported: silently ignoring one could
    // weaken the TLS the operator asked for.
    #[error("query parameters are not supported")]
    Query,
    #[error("user name or password is not valid percent-encoded UTF-8")]
    Credentials,
    #[error("TLS setup: {0}")]
    Tls(#[source] lettre::transport::smtp::Error),
}

pub struct SmtpTransport {
    inner: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl SmtpTransport {
    /// `url`: `smtp[s]://[user[:password]@]host[:port]`; `timeout` bounds one whole delivery
    /// attempt (connect, TLS, every command).
    pub fn new(url: &str, timeout: Duration, from: Mailbox) -> Result<Self, SmtpUrlError> {
        let target = Target::parse(url)?;
        let tls_parameters =
            TlsParameters::new(target.tls_name.clone()).map_err(SmtpUrlError::Tls)?;
        let tls = if target.implicit_tls {
            Tls::Wrapper(tls_parameters)
        } else {
            if target.credentials.is_some() {
                tracing::warn!(
                    "mail.smtp_url is smtp:// with credentials: they are sent in clear text if \
                     the server does not offer STARTTLS; prefer smtps://"
                );
            }
            Tls::Opportunistic(tls_parameters)
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(target.host)
            .port(target.port)
            .tls(tls)
            // lettre applies this per network operation; `send` bounds the whole attempt.
            .timeout(Some(timeout));
        if let Some((user, password)) = target.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Self {
            inner: builder.build(),
            from,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl Transport for SmtpTransport {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let email = compose(&self.from, message)?;
        match tokio::time::timeout(self.timeout, self.inner.send(email)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(SendError::transient(format!(
                "SMTP delivery took longer than {:?}",
                self.timeout
            ))),
        }
    }
}

/// A 5xx reply is permanent; anything else (4xx, refused connection, timeout, TLS trouble) may
/// pass, so the queue retries it.
fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    let detail = format!("SMTP: {error}");
    if error.is_permanent() {
        SendError::permanent(detail)
    } else {
        SendError::transient(detail)
    }
}

/// The parts of `mail.smtp_url` the transport needs.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Host as connected to (IPv6 without brackets).
    host: String,
    /// Name the server certificate must match.
    tls_name: String,
    port: u16,
    implicit_tls: bool,
    credentials: Option<(String, String)>,
}

impl Target {
    fn parse(text: &str) -> Result<Self, SmtpUrlError> {
        let url = Url::parse(text).map_err(|_| SmtpUrlError::NotAUrl)?;
        let implicit_tls = match url.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => return Err(SmtpUrlError::Scheme(other.to_owned())),
        };
        if url.query().is_some() {
            return Err(SmtpUrlError::Query);
        }
        let host = match url.host() {
            Some(Host::Domain(name)) if !name.is_empty() => name.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(SmtpUrlError::NoHost),
        };
        let port = url
            .port()
            .unwrap_or(if implicit_tls { SMTPS_PORT } else { SMTP_PORT });
        let decode = |part: &str| {
            percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| SmtpUrlError::Credentials)
        };
        let credentials = if url.username().is_empty() {
            None
        } else {
            Some((
                decode(url.username())?,
                decode(url.password().unwrap_or_default())?,
            ))
        };
        Ok(Self {
            tls_name: host.clone(),
            host,
            port,
            implicit_tls,
            credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let t = Target::parse("smtp://mail.example.com").unwrap();
        assert_eq!(
            t,
            Target {
                host: "mail.example.com".into(),
                tls_name: "mail.example.com".into(),
                port: 25,
                implicit_tls: false,
                credentials: None,
            }
        );
        let t = Target::parse("smtps://mail.example.com").unwrap();
        assert_eq!((t.port, t.implicit_tls), (465, true));
        let t = Target::parse("smtp://mail.example.com:587/").unwrap();
        assert_eq!((t.port, t.implicit_tls), (587, false));

        let t = Target::parse("smtps://ann%40example.com:p%40ss%3Aw%2Ford@10.0.0.7:2465").unwrap();
        assert_eq!(t.host, "10.0.0.7");
        assert_eq!(t.port, 2465);
        assert_eq!(
            t.credentials,
            Some(("ann@example.com".into(), "p@ss:w/ord".into()))
        );
        let t = Target::parse("smtp://relay@[::1]:2525").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.credentials, Some(("relay".into(), String::new())));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for (url, expected) in [
            (
                "mail.example.com:25",
                "scheme must be smtp or smtps, not \"mail.example.com\"",
            ),
            (
                "http://u:hunter2@mail.example.com",
                "scheme must be smtp or smtps, not \"http\"",
            ),
            (
                "smtp://u:hunter2@mail.example.com?tls=required",
                "query parameters are not supported",
            ),
            (
                "smtp://u:%FF@mail.example.com",
                "not valid percent-encoded UTF-8",
            ),
            ("smtp:hunter2", "has no host"),
            ("hunter2", "not a URL"),
        ] {
            let err = Target::parse(url).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn unreachable_server_is_transient() {
        // Bind then drop: the port is (very likely) closed, so the connection is refused.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let from: Mailbox = "no-reply@meiro.example".parse().unwrap();
        let transport = SmtpTransport::new(
            &format!("smtp://127.0.0.1:{port}"),
            Duration::from_secs(5),
            from,
        )
        .unwrap();
        let message = Message {
            to: "ann@example.com".into(),
            subject: "s".into(),
            text: "t".into(),
            html: "h".into(),
        };
        let err = transport.send(&message).await.unwrap_err();
        assert!(!err.permanent, "{err:?}");
    }
}
