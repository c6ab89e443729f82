//! The e-mail texts: built-in templates, per-file overrides from `mail.templates_dir`, and
//! rendering of the `{{link}}` / `{{email}}` placeholders (HTML-escaped in HTML bodies).

use std::io;
use std::path::{Path, PathBuf};

use super::Message;

/// Which e-mail to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invitation,
    PasswordReset,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Invitation, Kind::PasswordReset];

    /// Stable name for logs, audit details and the `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Invitation => "invitation",
            Kind::PasswordReset => "password_reset",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Kind::Invitation => "You have been invited to Meiro",
            Kind::PasswordReset => "Reset your Meiro password",
        }
    }

    /// File stem in `mail.templates_dir`, as documented on `MailConfig::templates_dir`.
    fn stem(self) -> &'static str {
        match self {
            Kind::Invitation => "invitation",
            Kind::PasswordReset => "reset",
        }
    }

    fn builtin(self, format: Format) -> &'static str {
        match (self, format) {
            (Kind::Invitation, Format::Text) => include_str!("templates/invitation.txt"),
            (Kind::Invitation, Format::Html) => include_str!("templates/invitation.html"),
            (Kind::PasswordReset, Format::Text) => include_str!("templates/reset.txt"),
            (Kind::PasswordReset, Format::Html) => include_str!("templates/reset.html"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Html,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Text => "txt",
            Format::Html => "html",
        }
    }
}

const PLACEHOLDERS: [&str; 2] = ["link", "email"];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read template directory {}: {source}", .dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read template {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    // An e-mail without its link is useless to the recipient: refuse it at start.
    #[error("template {} does not contain {{{{link}}}}", .path.display())]
    MissingLink { path: PathBuf },
    #[error(
        "template {} uses unknown placeholder {{{{{name}}}}}; known: {{{{link}}}}, {{{{email}}}}",
        .path.display()
    )]
    UnknownPlaceholder { path: PathBuf, name: String },
}

#[derive(Debug, Clone)]
struct Pair {
    text: String,
    html: String,
}

/// The four bodies, loaded once at start.
#[derive(Debug, Clone)]
pub struct Templates {
    invitation: Pair,
    reset: Pair,
}

impl Default for Templates {
    /// The built-in templates.
    fn default() -> Self {
        let pair = |kind: Kind| Pair {
            text: kind.builtin(Format::Text).to_owned(),
            html: kind.builtin(Format::Html).to_owned(),
        };
        Self {
            invitation: pair(Kind::Invitation),
            reset: pair(Kind::PasswordReset),
        }
    }
}

impl Templates {
    /// The built-in templates, with each file present in `dir` (`invitation.txt`,
    /// `invitation.html`, `reset.txt`, `reset.html`) replacing its built-in counterpart.
    /// A directory that cannot be listed, a file that cannot be read, or an override without
    /// `{{link}}` or with an unknown placeholder is an error, so a typo fails at start rather
    /// than in every e-mail.
    pub fn load(dir: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut templates = Templates::default();
        let Some(dir) = dir else {
            return Ok(templates);
        };
        std::fs::read_dir(dir).map_err(|source| TemplateError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        for kind in [Kind::Invitation, Kind::PasswordReset] {
            for format in [Format::Text, Format::Html] {
                let path = dir.join(format!("{}.{}", kind.stem(), format.extension()));
                let body = match std::fs::read_to_string(&path) {
                    Ok(body) => body,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(TemplateError::Read { path, source }),
                };
                check(&body, &path)?;
                tracing::info!(template = %path.display(), "mail template overridden");
                let pair = templates.pair_mut(kind);
                match format {
                    Format::Text => pair.text = body,
                    Format::Html => pair.html = body,
                }
            }
        }
        Ok(templates)
    }

    /// The message for `to`, with `link` and `to` substituted into both bodies.
    pub fn render(&self, kind: Kind, to: &str, link: &str) -> Message {
        let pair = match kind {
            Kind::Invitation => &self.invitation,
            Kind::PasswordReset => &self.reset,
        };
        let text_value = |name: &str| match name {
            "link" => Some(link.to_owned()),
            "email" => Some(to.to_owned()),
            _ => None,
        };
        let html_value = |name: &str| text_value(name).map(|v| html_escape(&v));
        Message {
            to: to.to_owned(),
            subject: kind.subject().to_owned(),
            text: substitute(&pair.text, text_value),
            html: substitute(&pair.html, html_value),
        }
    }

    fn pair_mut(&mut self, kind: Kind) -> &mut Pair {
        match kind {
            Kind::Invitation => &mut self.invitation,
            Kind::PasswordReset => &mut self.reset,
        }
    }
}

fn check(body: &str, path: &Path) -> Result<(), TemplateError> {
    let mut has_link = false;
    for name in placeholders(body) {
        match name {
            "link" => has_link = true,
            name if PLACEHOLDERS.contains(&name) => {}
            name => {
                return Err(TemplateError::UnknownPlaceholder {
                    path: path.to_owned(),
                    name: name.to_owned(),
                });
            }
        }
    }
    if has_link {
        Ok(())
    } else {
        Err(TemplateError::MissingLink {
            path: path.to_owned(),
        })
    }
}

/// Names of the `{{ name }}` placeholders in `template`, trimmed.
fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    let mut rest = template;
    std::iter::from_fn(move || {
        let start = rest.find("{{")?;
        let after = &rest[start + 2..];
        let end = after.find("}}")?;
        rest = &after[end + 2..];
        Some(after[..end].trim())
    })
}

/// Replaces each `{{ name }}` for which `value` answers, in one pass: a substituted value is
/// never scanned again, so a link containing `{{email}}` stays as it is.
fn substitute(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 128);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        match value(after[..end].trim()) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Escapes text for HTML element content and quoted attribute values.
fn html_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 16);
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: &str = "https://meiro.example/invite?token=a&b=<c>\"'";

    #[test]
    fn builtins_render_link_and_email() {
        let t = Templates::default();
        let m = t.render(Kind::Invitation, "ann@example.com", LINK);
        assert_eq!(m.to, "ann@example.com");
        assert_eq!(m.subject, "You have been invited to Meiro");
        assert!(m.text.contains(LINK), "{}", m.text);
        assert!(m.text.contains("ann@example.com"));
        assert!(!m.text.contains("{{"));
        let escaped = "https://meiro.example/invite?token=a&amp;b=&lt;c&gt;&quot;&#39;";
        assert!(
            m.html.contains(&format!("href=\"{escaped}\"")),
            "{}",
            m.html
        );
        assert!(!m.html.contains(LINK));
        assert!(!m.html.contains("{{"));

        let m = t.render(Kind::PasswordReset, "bob@example.com", "https://x/r?t=1");
        assert_eq!(m.subject, "Reset your Meiro password");
        assert!(m.text.contains("https://x/r?t=1"));
        assert!(m.html.contains("bob@example.com"));
    }

    #[test]
    fn builtins_pass_their_own_checks() {
        for kind in [Kind::Invitation, Kind::PasswordReset] {
            for format in [Format::Text, Format::Html] {
                check(kind.builtin(format), Path::new("builtin")).unwrap();
            }
        }
    }

    #[test]
    fn substitution_is_single_pass_and_keeps_unknown_names() {
        let value = |name: &str| (name == "link").then(|| "{{email}}".to_owned());
        assert_eq!(
            substitute("a {{ link }} b {{other}} c {{", value),
            "a {{email}} b {{other}} c {{"
        );
        assert_eq!(substitute("", value), "");
        assert_eq!(substitute("no placeholders", value), "no placeholders");
    }

    #[test]
    fn files_in_dir_override_builtins_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("reset.txt"),
            "Reset: {{link}} for {{ email }}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("invitation.html"),
            "<a href=\"{{link}}\">go</a>",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();

        let m = t.render(Kind::PasswordReset, "c@example.com", "https://x/?a=1&b=2");
        assert_eq!(m.text, "Reset: https://x/?a=1&b=2 for c@example.com\n");
        // The HTML of the same kind was not overridden.
        assert_eq!(
            m.html,
            Templates::default()
                .render(Kind::PasswordReset, "c@example.com", "https://x/?a=1&b=2")
                .html
        );

        let m = t.render(Kind::Invitation, "c@example.com", "https://x/?a=1&b=2");
        assert_eq!(m.html, "<a href=\"https://x/?a=1&amp;b=2\">go</a>");
        assert!(m.text.contains("You have been invited"));
    }

    #[test]
    fn bad_dir_or_bad_override_fails_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            Templates::load(Some(&missing)),
            Err(TemplateError::Dir { .. })
        ));

        std::fs::write(dir.path().join("invitation.txt"), "no link here").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert!(matches!(err, TemplateError::MissingLink { .. }), "{err}");
        assert!(err.to_string().contains("{{link}}"), "{err}");

        std::fs::write(dir.path().join("invitation.txt"), "{{link}} {{token}}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert!(
            matches!(&err, TemplateError::UnknownPlaceholder { name, .. } if name == "token"),
            "{err}"
        );
        assert!(err.to_string().contains("{{token}}"), "{err}");

        // A directory where a file is expected cannot be read as a template.
        std::fs::remove_file(dir.path().join("invitation.txt")).unwrap();
        std::fs::create_dir(dir.path().join("reset.html")).unwrap();
        assert!(matches!(
            Templates::load(Some(dir.path())),
            Err(TemplateError::Read { .. })
        ));
    }

    #[test]
    fn html_escape_covers_the_five_characters() {
        assert_eq!(
            html_escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(html_escape("plain ünïcode"), "plain ünïcode");
    }
}
