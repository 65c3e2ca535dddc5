//! Key paths for error messages: `pools.web.servers[1].addr`, written as an operator would.
//! Apart from `locate` (which reads the document to find a key) so that the document model and
//! the error wording both use it without depending on each other.

use std::fmt;

/// One step of a key path: a table key or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The dotted path of a key from the top of the document, as an operator would write it
/// (`listeners.web.bind`, `pools.web.servers[0].addr`, `listeners."my app".pool`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    pub fn root() -> KeyPath {
        KeyPath(Vec::new())
    }

    pub fn key(&self, key: &str) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    pub fn index(&self, index: usize) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    /// The table this path names, as a header would show it: `[listeners.web]`, or
    /// `pools.web.servers[1]` for an element of an array, or `the top level`.
    pub fn table(&self) -> TableName<'_> {
        TableName(self)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare =
                        !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

pub struct TableName<'a>(&'a KeyPath);

impl fmt::Display for TableName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 .0.last() {
            None => f.write_str("the top level"),
            Some(Segment::Index(_)) => write!(f, "{}", self.0),
            Some(Segment::Key(_)) => write!(f, "[{}]", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_quote_what_is_not_a_bare_key() {
        let path = KeyPath::root().key("pools").key("web").key("servers").index(1).key("addr");
        assert_eq!(path.to_string(), "pools.web.servers[1].addr");
        assert_eq!(KeyPath::root().key("listeners").key("my app").to_string(), r#"listeners."my app""#);
        assert_eq!(KeyPath::root().key("listeners").key("web").table().to_string(), "[listeners.web]");
        assert_eq!(KeyPath::root().key("s").index(0).table().to_string(), "s[0]");
        assert_eq!(KeyPath::root().table().to_string(), "the top level");
    }
}
