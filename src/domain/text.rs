//! Display text from callers (names, descriptions): trimmed of ASCII white space, at most so
//! many characters, and no control characters but line feeds. The protos state the same rule
//! as `buf.validate` patterns, so the contract and the domain agree on every input. Also the
//! URLs of endpoints callers name (webhooks, LLM providers).

use super::error::FieldViolation;
use std::borrow::Cow;

/// Whether a name or a description must say something.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Blank {
    Allowed,
    Refused,
}

pub fn bounded_text(
    field: &str,
    reason: &'static str,
    raw: &str,
    max_chars: usize,
    blank: Blank,
) -> Result<String, FieldViolation> {
    let text = raw.trim_matches(|c: char| c.is_ascii_whitespace());
    let refuse =
        |description: Cow<'static, str>| Err(FieldViolation::new(field, reason, description));
    if blank == Blank::Refused && text.is_empty() {
        return refuse("is required".into());
    }
    if text.chars().count() > max_chars {
        return refuse(format!("must be at most {max_chars} characters").into());
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return refuse("must not contain control characters (line feeds excepted)".into());
    }
    Ok(text.to_owned())
}

/// An http(s) URL in ASCII, as the contract's pattern states it: the host of letters,
/// digits and `._~%:[]-` (no `user:password@`), then anything printable.
pub fn http_url(field: &str, raw: &str) -> std::result::Result<String, FieldViolation> {
    let url = raw.trim();
    let invalid = || {
        FieldViolation::new(
            field,
            "INVALID_URL",
            "must be an http:// or https:// URL in ASCII (a punycode host), without user:password@",
        )
    };
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(invalid());
    };
    let host_length = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(host_length);
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._~%:[]-".contains(&byte));
    let tail_ok = tail.bytes().all(|byte| (b'!'..=b'~').contains(&byte));
    if !host_ok || !tail_ok || url.len() > 2000 {
        return Err(invalid());
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::{Blank, bounded_text, http_url};

    #[test]
    fn text_is_trimmed_bounded_and_free_of_control_characters() {
        let name = |raw: &str| bounded_text("name", "INVALID_NAME", raw, 5, Blank::Refused);
        assert_eq!(name("  Acme\n"), Ok("Acme".to_owned()));
        assert_eq!(name("a\nb"), Ok("a\nb".to_owned()));
        assert_eq!(name("\u{a0}"), Ok("\u{a0}".to_owned()));
        for refused in ["", " \t ", "abcdef", "a\u{7}b", "a\tb", "a\u{85}"] {
            assert!(name(refused).is_err(), "{refused:?}");
        }
        let optional = bounded_text("description", "INVALID_DESCRIPTION", " ", 5, Blank::Allowed);
        assert_eq!(optional, Ok(String::new()));
    }

    #[test]
    fn urls_are_http_with_a_host() {
        assert!(http_url("url", " https://hooks.example.com/keel ").is_ok());
        assert!(http_url("url", "http://127.0.0.1:9000/x").is_ok());
        for bad in [
            "ftp://example.com",
            "https://",
            "https://user:pass@example.com/",
            "example.com/hook",
            "https://exa mple.com",
        ] {
            assert!(http_url("url", bad).is_err(), "{bad}");
        }
    }
}
