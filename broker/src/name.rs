//! Validated names of tenants, regions, instances and modules.
//!
//! Names arrive from guests, clients and scenario files; they are checked once here and carried as
//! [`Name`] afterwards, so nothing downstream has to re-validate them. A `/` separates a tenant from an
//! object in qualified names (`tenant/region`), so it never appears inside a name.

use std::fmt;

/// The longest name, in bytes (the same bound the ABI enforces on guests).
pub const MAX_LEN: usize = broker_abi::MAX_NAME_LEN as usize;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_LEN`] bytes.
    #[error("name is {len} bytes long, the limit is {MAX_LEN}")]
    TooLong {
        /// The offending length.
        len: usize,
    },
    /// The name contains a character outside `[A-Za-z0-9._-]`.
    #[error("name contains {ch:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar {
        /// The first offending character.
        ch: char,
    },
    /// The bytes are not UTF-8.
    #[error("name is not valid UTF-8")]
    NotUtf8,
    /// `.` and `..` mean "this directory" and "the parent directory" wherever a name becomes part of
    /// a path, so they are never names.
    #[error("{0:?} is reserved and cannot be a name")]
    Reserved(&'static str),
}

/// A validated name: 1 to [`MAX_LEN`] bytes of `[A-Za-z0-9._-]`, other than `.` and `..`. So a name
/// is always a plain file name: persistent state is stored under names without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Validates a name.
    ///
    /// # Errors
    /// [`NameError`] says which rule the name breaks.
    pub fn new(s: &str) -> Result<Name, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(NameError::TooLong { len: s.len() });
        }
        if let Some(ch) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(NameError::BadChar { ch });
        }
        match s {
            "." => return Err(NameError::Reserved(".")),
            ".." => return Err(NameError::Reserved("..")),
            _ => {}
        }
        Ok(Name(s.to_owned()))
    }

    /// Validates a name given as raw bytes (from guest memory).
    ///
    /// # Errors
    /// [`NameError::NotUtf8`] or the errors of [`Name::new`].
    pub fn from_bytes(b: &[u8]) -> Result<Name, NameError> {
        std::str::from_utf8(b).map_err(|_| NameError::NotUtf8).and_then(Name::new)
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference to an object by name, optionally qualified with its tenant (`tenant/name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    /// The tenant part, if the reference was qualified.
    pub tenant: Option<Name>,
    /// The object's own name.
    pub name: Name,
}

impl QualifiedName {
    /// Parses `name` or `tenant/name`.
    ///
    /// # Errors
    /// Either part is not a valid [`Name`] (a second `/` shows up as a bad character).
    pub fn parse(s: &str) -> Result<QualifiedName, NameError> {
        match s.split_once('/') {
            None => Ok(QualifiedName { tenant: None, name: Name::new(s)? }),
            Some((t, n)) => Ok(QualifiedName { tenant: Some(Name::new(t)?), name: Name::new(n)? }),
        }
    }

    /// Parses raw bytes from guest memory.
    ///
    /// # Errors
    /// As [`QualifiedName::parse`], or [`NameError::NotUtf8`].
    pub fn from_bytes(b: &[u8]) -> Result<QualifiedName, NameError> {
        if b.len() > MAX_LEN {
            return Err(NameError::TooLong { len: b.len() });
        }
        std::str::from_utf8(b).map_err(|_| NameError::NotUtf8).and_then(QualifiedName::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("a/b"), Err(NameError::BadChar { ch: '/' }));
        assert_eq!(Name::new(&"x".repeat(MAX_LEN + 1)), Err(NameError::TooLong { len: MAX_LEN + 1 }));
        assert_eq!(Name::from_bytes(&[0xff]), Err(NameError::NotUtf8));
        assert!(Name::new("sensor-hub_1.v2").is_ok());
        // Issue 15: the two path components that are not plain names.
        assert_eq!(Name::new("."), Err(NameError::Reserved(".")));
        assert_eq!(Name::new(".."), Err(NameError::Reserved("..")));
        assert_eq!(QualifiedName::parse("../x"), Err(NameError::Reserved("..")));
        assert!(Name::new("...").is_ok() && Name::new(".hidden").is_ok(), "only the two reserved ones");
    }

    #[test]
    fn qualified_names_split_once() {
        let q = QualifiedName::parse("acme/data").expect("valid");
        assert_eq!(q.tenant.as_ref().map(Name::as_str), Some("acme"));
        assert_eq!(q.name.as_str(), "data");
        assert_eq!(QualifiedName::parse("a/b/c"), Err(NameError::BadChar { ch: '/' }));
        assert_eq!(QualifiedName::parse("/x"), Err(NameError::Empty));
    }
}
