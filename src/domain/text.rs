//! Display text from callers (names, descriptions): trimmed of ASCII white space, at most so
//! many characters, and no control characters but line feeds. The protos state the same rule
//! as `buf.validate` patterns, so the contract and the domain agree on every input.

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

#[cfg(test)]
mod tests {
    use super::{Blank, bounded_text};

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
}
