//! One way to say what to do next. An error that knows the obvious fix implements [`Hint`];
//! [`report`] prints the whole cause chain on one line, then every hint found along it on lines
//! of their own (`hint: …`), as uv does. Errors never put a hint into their own message.

use std::borrow::Cow;
use std::error::Error;

use thiserror::Error;

/// An error that can say what the user should do next.
pub trait Hint {
    fn hint(&self) -> Option<Cow<'_, str>>;
}

/// A word of input (a flag's value, a field of a file) that is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{text}` is not {what} (use {expected})")]
pub struct BadValue {
    pub text: String,
    /// What it should have been, with its article: "a size".
    pub what: &'static str,
    /// What would be valid.
    pub expected: &'static str,
}

impl BadValue {
    pub fn new(text: &str, what: &'static str, expected: &'static str) -> BadValue {
        BadValue {
            text: text.to_owned(),
            what,
            expected,
        }
    }
}

/// A message and its hint, for errors made by a caller (the CLI's own checks).
#[derive(Debug, Error)]
#[error("{message}")]
pub struct Hinted {
    pub message: String,
    pub hint: Cow<'static, str>,
}

impl Hinted {
    pub fn new(message: impl Into<String>, hint: impl Into<Cow<'static, str>>) -> Hinted {
        Hinted {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl Hint for Hinted {
    fn hint(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.hint))
    }
}

/// The error and its causes on one line, skipping a cause its parent's message already quotes;
/// then each distinct hint of the chain (what `hint_of` finds for a cause, see
/// [`crate::hint_of`], and `extra`, hints the caller found itself) on a line of its own.
pub fn report<'a>(
    chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>,
    hint_of: impl Fn(&(dyn Error + 'static)) -> Option<String>,
    extra: impl IntoIterator<Item = String>,
) -> String {
    let mut text = String::new();
    let mut hints: Vec<String> = Vec::new();
    for (i, cause) in chain.into_iter().enumerate() {
        // No raw byte of a broken input reaches the terminal, whatever error quoted it.
        let c: Vec<String> = cause
            .to_string()
            .split('\n')
            .map(|l| printable(l, usize::MAX))
            .collect();
        let c = c.join("\n");
        if i == 0 {
            text = c;
        } else if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        hints.extend(hint_of(cause));
    }
    hints.extend(extra);
    let mut seen = Vec::new();
    for h in hints {
        if !seen.contains(&h) {
            text.push_str("\nhint: ");
            text.push_str(&h);
            seen.push(h);
        }
    }
    text
}

/// Text from outside (a server's answer, a file's bytes) as it may be shown in an error: at most `max` characters, control characters
/// (and so any terminal escape) written as `\u{..}`, never raw bytes.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().take(max) {
        if c.is_control() && c != ' ' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The chain of `e`, from `e` itself to its root cause.
pub fn chain<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn Error + 'static)| (*e).source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Error)]
    #[error("outer")]
    struct Outer(#[source] Hinted);

    #[test]
    fn hints_come_after_the_whole_chain() {
        let e = Outer(Hinted::new("inner: details", "do this"));
        assert_eq!(
            report(chain(&e), crate::hint_of, None),
            "outer: inner: details\nhint: do this"
        );
        // A cause already quoted by its parent is not repeated; a hint is given once.
        let e = Hinted::new("a: b", "x");
        assert_eq!(
            report(chain(&e), crate::hint_of, Some("x".to_owned())),
            "a: b\nhint: x"
        );
        assert_eq!(report(chain(&e), |_| None, None), "a: b");
    }

    #[test]
    fn no_raw_control_byte_reaches_the_terminal() {
        assert_eq!(printable("a\x1b[31mb\n", 100), "a\\u{1b}[31mb\\u{a}");
        assert_eq!(printable("abcdef", 3), "abc");
        let e = Hinted::new("bad \x00\x07 field\nsecond line", "x");
        assert_eq!(
            report(chain(&e), |_| None, None),
            "bad \\u{0}\\u{7} field\nsecond line"
        );
    }
}
