//! Channel names: a validated, cheaply clonable newtype.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::ChannelNameError;

/// A validated channel name (by default 1–256 characters of `[A-Za-z0-9_.:-]`).
///
/// Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` against the default rule (1–256 characters of `[A-Za-z0-9_.:-]`).
    ///
    /// # Errors
    /// [`ChannelNameError`] saying what is wrong with the name.
    ///
    /// # Examples
    /// ```
    /// use wshub::ChannelName;
    /// assert_eq!(ChannelName::new("process:42").unwrap().as_str(), "process:42");
    /// assert!(ChannelName::new("no spaces").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, ChannelNameError> {
        Self::with_max_len(name, 256)
    }

    pub(crate) fn with_max_len(name: &str, max_len: usize) -> Result<Self, ChannelNameError> {
        validate_channel_name(name, max_len)?;
        Ok(ChannelName(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the naming rule: 1..=`max_len` bytes of `[A-Za-z0-9_.:-]`.
pub(crate) fn validate_channel_name(name: &str, max_len: usize) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if let Some(found) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(ChannelNameError::InvalidChar { found });
    }
    if name.len() > max_len {
        return Err(ChannelNameError::TooLong { max: max_len });
    }
    Ok(())
}

impl Deref for ChannelName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_ws_process_names_and_the_whole_charset() {
        for name in ["process:p1", "a", "A-Z_a.z:0-9", &"x".repeat(256)] {
            assert!(ChannelName::new(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        assert_eq!(ChannelName::new(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::new(&"x".repeat(257)),
            Err(ChannelNameError::TooLong { max: 256 })
        );
        assert_eq!(
            ChannelName::new("chat room"),
            Err(ChannelNameError::InvalidChar { found: ' ' })
        );
        assert_eq!(
            ChannelName::new("é"),
            Err(ChannelNameError::InvalidChar { found: 'é' })
        );
        assert_eq!(
            ChannelName::new("a*"),
            Err(ChannelNameError::InvalidChar { found: '*' })
        );
    }
}
