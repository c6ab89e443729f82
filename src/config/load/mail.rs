//! `[mail]`.

use std::path::PathBuf;

use figment::value::Value;
use url::Url;

use super::convert::{choice, duration, non_empty_text, path, text};
use super::reader::Section;
use super::{POSITIVE, secs};
use crate::config::{MailConfig, MailTransport};
use crate::types::Secret;

pub(super) fn read_mail(mut s: Section<'_>) -> MailConfig {
    let transport = s.get("transport", MailTransport::File, mail_transport);
    let dir = s.get("dir", PathBuf::from("data/outbox"), path);
    let smtp_url = s.get("smtp_url", String::new(), text);
    let from = s.get(
        "from",
        "Meiro <no-reply@localhost>".to_owned(),
        non_empty_text,
    );
    let templates_dir = s.opt("templates_dir", path);
    let smtp_timeout = s.get("smtp_timeout", secs(10), duration);
    let retry_initial = s.get("retry_initial", secs(1), duration);
    let retry_max = s.get("retry_max", secs(300), duration);
    let give_up_after = s.get("give_up_after", secs(86_400), duration);

    if transport == MailTransport::Smtp {
        match Url::parse(&smtp_url) {
            _ if smtp_url.is_empty() => s.problem("smtp_url", "required with transport = \"smtp\""),
            Ok(url) if matches!(url.scheme(), "smtp" | "smtps") && url.host_str().is_some() => {}
            // The value may hold a password: never echo it.
            _ => s.problem(
                "smtp_url",
                "must be smtp://[user:password@]host[:port] or smtps://…",
            ),
        }
    }
    s.check(
        "from",
        from.contains('@') && !from.contains(['\r', '\n']),
        "must be a mailbox such as \"Meiro <no-reply@example.com>\"",
    );
    for (key, value) in [
        ("smtp_timeout", smtp_timeout),
        ("retry_initial", retry_initial),
        ("retry_max", retry_max),
        ("give_up_after", give_up_after),
    ] {
        s.check(key, !value.is_zero(), POSITIVE);
    }
    if retry_max < retry_initial {
        s.problem("retry_max", "must be at least mail.retry_initial");
    }
    MailConfig {
        transport,
        dir,
        smtp_url: Secret::url(smtp_url),
        from,
        templates_dir,
        smtp_timeout,
        retry_initial,
        retry_max,
        give_up_after,
    }
}

fn mail_transport(value: &Value) -> Result<MailTransport, String> {
    choice(value, "transport")
}
