//! Positions and key paths for error messages.
//!
//! Owns the mapping from byte offsets to 1-based `line:column` and the wording of toml's errors as [`Problem`]s that name their
//! key (found through a [`Document`]). It never decides whether a configuration is valid.

use std::fmt;

use super::document::{Document, Find};
use super::keypath::KeyPath;
use super::Problem;

/// A 1-based line and column (counted in characters) in the configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `text`. Offsets past the end (or inside a character)
    /// are clamped to the nearest character boundary before them.
    pub fn of(text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Position { line: before.matches('\n').count() + 1, column: before[line_start..].chars().count() + 1 }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Turns a toml error into the byte offset it points at and a problem that names the key.
///
/// `document` is the same text read as a [`Document`]; it is `None` when the text is not valid
/// TOML, and then the error is a syntax error.
pub fn explain(error: &toml::de::Error, document: Option<&Document>) -> (usize, Problem) {
    let span = error.span();
    let offset = span.as_ref().map_or(0, |span| span.start);
    // toml's messages may span several lines ("invalid table header\nduplicate key ..."): the
    // contract is one line per error.
    let raw_message = error.message().trim();
    let message = raw_message.lines().map(str::trim).collect::<Vec<_>>().join(": ");
    let Some(document) = document else {
        return (offset, Problem::Syntax(message));
    };
    let find = |mode| span.as_ref().and_then(|span| document.find(span, mode));

    if let Some(rest) = raw_message.strip_prefix("unknown field `") {
        // serde: "unknown field `x`, expected one of `a`, `b`" / "expected `a` or `b`" /
        // "there are no fields". The backquoted names after the first are the expected keys.
        let mut quoted = rest.split('`').step_by(2);
        // Shown like a path segment: quoted and escaped unless it is a bare key, so that a key
        // with a newline or a control character cannot break the one-line message.
        let key = KeyPath::root().key(quoted.next().unwrap_or_default()).to_string();
        let expected = quoted.collect::<Vec<_>>().join(", ");
        let table = find(Find::KeyOf).unwrap_or_default();
        return (offset, Problem::UnknownKey { key, table, expected });
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or_default().to_owned();
        let table = find(Find::Value).unwrap_or_default();
        return (offset, Problem::MissingKey { table, key });
    }
    match find(Find::Value) {
        Some(key) => (offset, Problem::BadValue { key, message: in_toml_words(&message) }),
        None => (offset, Problem::Syntax(message)),
    }
}

/// serde's names for data types replaced by TOML's ("map" is a table, "sequence" an array).
fn in_toml_words(message: &str) -> String {
    message
        .replace("invalid type: map", "invalid type: table")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("expected a map", "expected a table")
        .replace("expected a sequence", "expected an array")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\ncdé\n\nx";
        assert_eq!(Position::of(text, 0), Position { line: 1, column: 1 });
        assert_eq!(Position::of(text, 2), Position { line: 1, column: 3 });
        assert_eq!(Position::of(text, 3), Position { line: 2, column: 1 });
        // "é" is two bytes: the byte after it is the fourth character of the line.
        assert_eq!(Position::of(text, 7), Position { line: 2, column: 4 });
        assert_eq!(Position::of(text, 8), Position { line: 3, column: 1 });
        assert_eq!(Position::of(text, 9), Position { line: 4, column: 1 });
        assert_eq!(Position::of(text, 1000), Position { line: 4, column: 2 });
        // Inside "é": clamped back to its start.
        assert_eq!(Position::of(text, 6), Position { line: 2, column: 3 });
    }
}
