//! The untyped reading of a configuration file that knows where everything is.
//!
//! toml reports where a serde error happened (a byte span) but not which key it concerns. On the
//! error path the text is read a second time into a [`Document`] that records the span of every
//! key and value, and the span is looked up there to name the key. Nothing here judges the
//! configuration; it only answers "what is at this span".

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::keypath::KeyPath;

/// What a span is matched against in [`Document::find`].
#[derive(Clone, Copy)]
pub enum Find {
    /// The span is a key's: answer the path of the table holding it.
    KeyOf,
    /// The span is a value's (or a key's, for tables toml has no value span for): answer its path.
    Value,
}

/// Every key and value of a TOML document with the byte spans toml knows for them.
///
/// toml gives spans for keys, scalars, arrays, inline tables and tables opened by a header, but
/// none for tables that only exist because of a dotted key or a deeper header (`listeners` in
/// `[listeners.web]`); those are recorded without a span.
pub struct Document {
    root: Vec<Entry>,
}

struct Entry {
    key: String,
    key_span: Option<Range<usize>>,
    value: Located,
}

struct Located {
    span: Option<Range<usize>>,
    node: Node,
}

enum Node {
    Table(Vec<Entry>),
    Array(Vec<Located>),
    Scalar,
}

impl Document {
    pub fn find(&self, span: &Range<usize>, mode: Find) -> Option<KeyPath> {
        find_in_table(&self.root, &KeyPath::root(), span, mode)
    }
}

fn find_in_table(entries: &[Entry], path: &KeyPath, span: &Range<usize>, mode: Find) -> Option<KeyPath> {
    for entry in entries {
        let entry_path = path.key(&entry.key);
        if entry.key_span.as_ref() == Some(span) {
            return Some(match mode {
                Find::KeyOf => path.clone(),
                Find::Value => entry_path,
            });
        }
        if let Some(found) = find_in_value(&entry.value, &entry_path, span, mode) {
            return Some(found);
        }
    }
    None
}

fn find_in_value(value: &Located, path: &KeyPath, span: &Range<usize>, mode: Find) -> Option<KeyPath> {
    if matches!(mode, Find::Value) && value.span.as_ref() == Some(span) {
        return Some(path.clone());
    }
    match &value.node {
        Node::Table(entries) => find_in_table(entries, path, span, mode),
        Node::Array(elements) => {
            elements.iter().enumerate().find_map(|(i, element)| find_in_value(element, &path.index(i), span, mode))
        }
        Node::Scalar => None,
    }
}

// The tree is read through toml's own span protocol: a type that asks for a struct with these
// name and fields (the ones `toml::Spanned` uses) is handed the span and then the value, when toml
// has a span. `toml::Spanned` itself fails on tables without a span, so it cannot be used here;
// these visitors accept both shapes. A unit test below breaks if toml changes the protocol.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Node::deserialize(deserializer)? {
            Node::Table(root) => Ok(Document { root }),
            Node::Array(_) | Node::Scalar => Err(de::Error::custom("expected a table")),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element::<Located>()? {
            elements.push(element);
        }
        Ok(Node::Array(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        read_entries(&mut map, Vec::new()).map(Node::Table)
    }
}

fn read_entries<'de, A: MapAccess<'de>>(map: &mut A, mut entries: Vec<Entry>) -> Result<Vec<Entry>, A::Error> {
    while let Some(key) = map.next_key::<Key>()? {
        let value = map.next_value::<Located>()?;
        entries.push(Entry { key: key.text, key_span: key.span, value });
    }
    Ok(entries)
}

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, LocatedVisitor)
    }
}

struct LocatedVisitor;

impl<'de> Visitor<'de> for LocatedVisitor {
    type Value = Located;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Located, E> {
        Ok(Located { span: None, node: Node::Scalar })
    }
    fn visit_i64<E>(self, _: i64) -> Result<Located, E> {
        Ok(Located { span: None, node: Node::Scalar })
    }
    fn visit_u64<E>(self, _: u64) -> Result<Located, E> {
        Ok(Located { span: None, node: Node::Scalar })
    }
    fn visit_f64<E>(self, _: f64) -> Result<Located, E> {
        Ok(Located { span: None, node: Node::Scalar })
    }
    fn visit_str<E>(self, _: &str) -> Result<Located, E> {
        Ok(Located { span: None, node: Node::Scalar })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Located, A::Error> {
        Ok(Located { span: None, node: NodeVisitor.visit_seq(seq)? })
    }

    /// Either toml's span protocol (start, end, value) or, for a table without a span, the
    /// table's own entries.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located, A::Error> {
        let Some(first) = map.next_key::<Key>()? else {
            return Ok(Located { span: None, node: Node::Table(Vec::new()) });
        };
        if first.text != SPANNED_START {
            let value = map.next_value::<Located>()?;
            let first = Entry { key: first.text, key_span: first.span, value };
            return Ok(Located { span: None, node: Node::Table(read_entries(&mut map, vec![first])?) });
        }
        let start: usize = map.next_value()?;
        let mut end = start;
        let mut node = Node::Scalar;
        while let Some(key) = map.next_key::<Key>()? {
            match key.text.as_str() {
                SPANNED_END => end = map.next_value()?,
                SPANNED_VALUE => node = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Located { span: Some(start..end), node })
    }
}

/// A table key and, when toml has it, its span.
struct Key {
    text: String,
    span: Option<Range<usize>>,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, text: &str) -> Result<Key, E> {
        Ok(Key { text: text.to_owned(), span: None })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let (mut start, mut end, mut text) = (None, None, None);
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                SPANNED_START => start = Some(map.next_value::<usize>()?),
                SPANNED_END => end = Some(map.next_value::<usize>()?),
                SPANNED_VALUE => text = Some(map.next_value::<String>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let text = text.ok_or_else(|| de::Error::missing_field(SPANNED_VALUE))?;
        let span = start.zip(end).map(|(start, end)| start..end);
        Ok(Key { text, span })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str) -> Vec<(String, Option<String>, Option<String>)> {
        fn walk(
            entries: &[Entry],
            path: &KeyPath,
            text: &str,
            out: &mut Vec<(String, Option<String>, Option<String>)>,
        ) {
            for entry in entries {
                let entry_path = path.key(&entry.key);
                let key = entry.key_span.clone().map(|span| text[span].to_owned());
                walk_value(&entry.value, &entry_path, key, text, out);
            }
        }
        fn walk_value(
            value: &Located,
            path: &KeyPath,
            key: Option<String>,
            text: &str,
            out: &mut Vec<(String, Option<String>, Option<String>)>,
        ) {
            let value_text = value.span.clone().map(|span| text[span].to_owned());
            out.push((path.to_string(), key, value_text));
            match &value.node {
                Node::Table(entries) => walk(entries, path, text, out),
                Node::Array(elements) => {
                    for (i, element) in elements.iter().enumerate() {
                        walk_value(element, &path.index(i), None, text, out);
                    }
                }
                Node::Scalar => {}
            }
        }
        let document: Document = toml::from_str(text).expect("valid TOML");
        let mut out = Vec::new();
        walk(&document.root, &KeyPath::root(), text, &mut out);
        out
    }

    /// Guards the span protocol shared with toml: if it changes, the spans disappear here.
    #[test]
    fn document_records_spans_of_keys_and_values_in_every_table_shape() {
        let text = "a.b = 1\n[t.u]\nv = \"x\"\nw = { y = [1, 2] }\n[[arr]]\nz = true\n";
        let found = paths(text);
        let get = |path: &str| {
            found.iter().find(|(p, _, _)| p == path).cloned().unwrap_or_else(|| panic!("{path}: {found:?}"))
        };
        assert_eq!(get("a"), ("a".into(), Some("a".into()), None));
        assert_eq!(get("a.b"), ("a.b".into(), Some("b".into()), Some("1".into())));
        assert_eq!(get("t.u").1, Some("u".into()));
        assert!(get("t.u").2.is_some_and(|table| table.starts_with("[t.u]")));
        assert_eq!(get("t.u.v").2, Some("\"x\"".into()));
        assert_eq!(get("t.u.w").2, Some("{ y = [1, 2] }".into()));
        assert_eq!(get("t.u.w.y").2, Some("[1, 2]".into()));
        assert_eq!(get("t.u.w.y[1]").2, Some("2".into()));
        assert!(get("arr[0]").2.is_some_and(|table| table.starts_with("[[arr]]")));
        assert_eq!(get("arr[0].z").2, Some("true".into()));
    }

    #[test]
    fn every_toml_value_kind_reads_into_a_document() {
        let text = "d = 1979-05-27T07:32:00Z\nf = 1.5\ne = []\nt = {}\n[empty]\n";
        let found = paths(text);
        let top: Vec<&str> = found.iter().map(|(path, ..)| path.as_str()).filter(|path| !path.contains('.')).collect();
        assert_eq!(top, ["d", "f", "e", "t", "empty"]);
    }
}
