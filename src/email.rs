//! The one rule for e-mail addresses. Every way an address enters the gateway (invite,
//! re-invite, forgotten password, Okta sign-in and auto-provisioning, `users add`, the
//! bootstrap admin) and the mail path itself ([`crate::mail`] composing a message) go through
//! [`parse`], so an address the API accepts is one the mail path can deliver to, and the
//! mail path never meets one it refuses.
//!
//! The rule is deliberately narrower than what lettre parses (see [`parse`]): it keeps out
//! everything lettre refuses (`a..b@x.io`, `.a@x.io`, `a(b)@x.io`, `a@[127.0.0.1]`, …) and
//! the forms lettre accepts but rewrites or cannot always send: quoted local parts (lettre's
//! mailbox parser drops the quotes, so `"ab"@x.io` would be mailed to `ab@x.io`), domain and
//! IP literals, non-ASCII addresses (they need SMTPUTF8 at every hop; lettre refuses them
//! before sending when the relay does not offer it) and domains that are not host names.

use lettre::Address;

/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle brackets.
const MAX_ADDRESS: usize = 254;
/// RFC 5321 §4.5.3.1.1.
const MAX_LOCAL_PART: usize = 64;
/// RFC 1035 §2.3.4.
const MAX_LABEL: usize = 63;

/// Emails are compared and stored trimmed and lower-cased (api-contract.md); [`parse`] takes
/// them in this form.
pub fn normalize(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Why an address is refused. The text says which rule failed and never repeats the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEmail {
    #[error("an address is ASCII only (an internationalized domain in its xn-- form)")]
    NotAscii,
    #[error("an address is at most {MAX_ADDRESS} characters")]
    TooLong,
    #[error("an address is local-part@domain")]
    NoAt,
    #[error(
        "the part before @ is 1 to {MAX_LOCAL_PART} letters, digits or !#$%&'*+-/=?^_`{{|}}~, \
         with single dots between them"
    )]
    LocalPart,
    #[error(
        "the domain is a host name: two or more dot-separated labels of letters, digits and \
         inner hyphens, the last not all digits"
    )]
    Domain,
}

/// The address as lettre sends it, if `address` follows the rule (callers [`normalize`] it
/// first):
///
/// - ASCII only, at most 254 characters, exactly one `@`;
/// - local part: RFC 5322 dot-atom, at most 64 characters: `atext` runs (letters, digits and
///   ``!#$%&'*+-/=?^_`{|}~``) joined by single dots — no quoted strings, comments, spaces,
///   `"(),:;<>@[\]`, leading, trailing or doubled dots;
/// - domain: a host name, two or more labels of 1–63 letters, digits and hyphens, no label
///   starting or ending with a hyphen, the last label not all digits (so no IPv4 address);
///   no `[…]` literal, no trailing dot.
///
/// Every address this accepts, lettre accepts too and sends unchanged — both as an
/// [`Address`] and through the mailbox parser the message builder used before (see the tests).
pub fn parse(address: &str) -> Result<Address, InvalidEmail> {
    if !address.is_ascii() {
        return Err(InvalidEmail::NotAscii);
    }
    if address.len() > MAX_ADDRESS {
        return Err(InvalidEmail::TooLong);
    }
    let (local, domain) = address.split_once('@').ok_or(InvalidEmail::NoAt)?;
    if !is_dot_atom(local) || local.len() > MAX_LOCAL_PART {
        return Err(InvalidEmail::LocalPart);
    }
    if !is_host_name(domain) {
        return Err(InvalidEmail::Domain);
    }
    // Under the rule above lettre cannot refuse; asking it anyway keeps the two from drifting
    // apart silently if a lettre upgrade narrows what it takes.
    Address::new(local, domain).map_err(|e| match e {
        lettre::address::AddressError::InvalidUser => InvalidEmail::LocalPart,
        _ => InvalidEmail::Domain,
    })
}

/// [`parse`] as a yes/no.
pub fn is_valid(address: &str) -> bool {
    parse(address).is_ok()
}

/// RFC 5322 §3.2.3 `dot-atom-text`, ASCII only.
fn is_dot_atom(text: &str) -> bool {
    text.split('.')
        .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// RFC 5322 §3.2.3 `atext`.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// A DNS host name of at least two labels (RFC 1123 §2.1, RFC 3696 §2: the top-level label
/// is not all-numeric).
fn is_host_name(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=MAX_LABEL).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use lettre::message::Mailbox;

    use super::*;

    /// Addresses the rule accepts.
    const VALID: &[&str] = &[
        "a@b.co",
        "first.last+tag@sub.example.com",
        "x@xn--bcher-kva.de",
        "o'brien@example.ie",
        "a!#$%&'*+-/=?^_`{|}~z@example.com",
        "user@a-b.example",
        "1@2.example",
        "x@example.c0m",
    ];

    /// Addresses lettre's mailbox parser (what `compose` used) refuses: they used to pass the
    /// API and be dropped by the mail queue. Issue 14, hole 7.
    const LETTRE_REFUSES: &[&str] = &[
        "a..b@example.com",
        "dot.@example.com",
        ".dot@example.com",
        "a(b)@example.com",
        "a:b@example.com",
        "a[b]@example.com",
        "a\\b@example.com",
        "a@[127.0.0.1]",
        "a@[IPv6:::1]",
        "a@example..com",
        "a@example.com.",
        "a@-example.com",
        "a@example-.com",
        "\"a b\"@example.com",
    ];

    /// Addresses lettre accepts but the rule refuses on purpose (see the module doc).
    const RULE_REFUSES: &[&str] = &[
        "\"ab\"@example.com", // lettre's parser mails it to ab@example.com
        "a@127.0.0.1",        // an IP, not a host name
        "a@x.123",
        "a@localhost", // one label: not routable on the Internet
        "a@b!c.com",
        "a@b_c.com",
        "ü@example.com", // needs SMTPUTF8 at every hop
        "a@bücher.de",
        "Ann <a@example.com>", // a mailbox, not an address
        " a@example.com",
    ];

    /// Plain malformed input.
    const MALFORMED: &[&str] = &[
        "",
        "a",
        "a@",
        "@b.co",
        "a@b",
        "a@@b.co",
        "a@b@c.co",
        "a b@c.de",
        "<a@b.co>",
        "a@b.co,c@d.co",
        "a\n@b.co",
        "a\0@b.co",
    ];

    #[test]
    fn the_rule() {
        for ok in VALID {
            assert_eq!(parse(ok).map(|a| a.to_string()).as_deref(), Ok(*ok));
        }
        for bad in LETTRE_REFUSES.iter().chain(RULE_REFUSES).chain(MALFORMED) {
            assert!(!is_valid(bad), "{bad:?} accepted");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(parse(&long_local), Err(InvalidEmail::LocalPart));
        assert!(is_valid(&format!("{}@example.com", "a".repeat(64))));
        let long_label = format!("a@{}.com", "b".repeat(64));
        assert_eq!(parse(&long_label), Err(InvalidEmail::Domain));
        let long = format!("a@{}.com", vec!["b".repeat(60); 5].join("."));
        assert_eq!(parse(&long), Err(InvalidEmail::TooLong));
        assert_eq!(parse("ü@example.com"), Err(InvalidEmail::NotAscii));
        assert_eq!(parse("example.com"), Err(InvalidEmail::NoAt));
    }

    #[test]
    fn what_lettre_refuses_the_rule_refuses() {
        for address in LETTRE_REFUSES {
            assert!(
                address.parse::<Mailbox>().is_err(),
                "{address:?}: lettre's mailbox parser takes it now; move it to RULE_REFUSES"
            );
            assert!(!is_valid(address), "{address:?}");
        }
    }

    /// The property the module promises, over every address of the lists above and a few
    /// hundred thousand generated ones: whatever the rule accepts, lettre accepts and keeps
    /// unchanged, both as an `Address` and through the mailbox parser.
    #[test]
    fn whatever_the_rule_accepts_lettre_sends_unchanged() {
        let check = |address: &str| {
            let Ok(parsed) = parse(address) else {
                return false;
            };
            assert_eq!(parsed.to_string(), address);
            let as_address: Address = address
                .parse()
                .unwrap_or_else(|e| panic!("{address:?}: lettre's Address refuses it: {e}"));
            assert_eq!(as_address.to_string(), address);
            let mailbox: Mailbox = address
                .parse()
                .unwrap_or_else(|e| panic!("{address:?}: lettre's Mailbox refuses it: {e}"));
            assert_eq!(mailbox.email.to_string(), address);
            assert_eq!(mailbox.name, None);
            true
        };
        for address in VALID
            .iter()
            .chain(LETTRE_REFUSES)
            .chain(RULE_REFUSES)
            .chain(MALFORMED)
        {
            check(address);
        }
        // Short strings over the characters that matter to either parser; a fixed xorshift
        // seed keeps the run reproducible.
        const ALPHABET: &[u8] = b"ab1.@-_+'\"()[]:;\\ <>,!~xn\t";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..300_000 {
            let len = 3 + (next() % 10) as usize;
            let mut text: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
                .collect();
            // Most random strings lack an `@` between two parts; give half of them one.
            if next() % 2 == 0 {
                text.insert_str(len / 2, "@a.b");
            }
            if check(&text) {
                accepted += 1;
            }
        }
        assert!(
            accepted > 300,
            "the generator rarely hits valid addresses: {accepted}"
        );
    }
}
